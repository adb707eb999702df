"""Small data from scratch (issue 16, docs/small-data.md): what stalled a from-scratch run on a few hundred short
clips, and the settings of the `small-data` recipe that resolve it when a run starts.

The cause, as measured: with AudioSet's spectrogram statistics and an audio window twice the clip (half of it
padding), a freshly initialised model's head input is ~99 % the same vector for every clip (what the clips share:
the padding, the background, the offset AudioSet's mean leaves), so the gradient carries almost nothing about the
individual clip. The tests below build short clips of that kind (a clip-specific sound over a shared background)."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import torch

from mbt.config import build_config, load_config
from mbt.data.compact import read_compact_manifest
from mbt.data.datasets import ClipDataset
from mbt.data.manifest import read_classes
from mbt.data.window import fit_window, probe_durations
from mbt.engine.data_fit import resolve_data_settings
from mbt.media.preprocess import Preprocessor
from mbt.model import MBT
from media_factory import write_av

CLIPS = 16


@pytest.fixture(scope="module")
def short_set(tmp_path_factory):
    """16 two-second clips (two classes): a word-like burst at a random moment over shared noise, a bright square
    at a random place over a shared dim canvas."""
    root = tmp_path_factory.mktemp("short_set")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(CLIPS):
        at, pitch = rng.uniform(0.2, 1.4), (300.0, 900.0)[i % 2]
        noise_seed = int(rng.integers(1 << 30))
        y, x = (int(v) for v in rng.integers(8, 72, 2))

        def audio_fn(t, at=at, pitch=pitch, seed=noise_seed):
            burst = np.where((t >= at) & (t < at + 0.4), 0.5 * np.sin(2 * np.pi * pitch * t), 0.0)
            return burst + 0.05 * np.random.default_rng(seed).standard_normal(len(t))

        def frame_fn(index, t, y=y, x=x):
            frame = np.full((96, 128, 3), 60, np.uint8)
            frame[y:y + 24, x:x + 24] = 220
            return frame

        write_av(root / f"c{i}.mp4", seconds=2.0, fps=10, size=(128, 96), sample_rate=22050,
                 audio_fn=audio_fn, frame_fn=frame_fn)
        rows.append((f"c{i}.mp4", ("low", "high")[i % 2]))
    with (root / "train.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("path", "labels"), *rows])
    (root / "classes.txt").write_text("low\nhigh\n")
    return root


def _config(root, recipe: str | None = None, *extra: str):
    overrides = [f"data.train={root / 'train.csv'}", f"data.classes={root / 'classes.txt'}",
                 "model.num_classes=2", *extra]
    return load_config(recipe, overrides) if recipe else build_config(overrides=overrides)


def head_input_spread(cfg, stream: str = "audio") -> float:
    """R: mean squared distance of the clips' head inputs from their mean, over the mean's squared norm, for a
    freshly initialised model. Near 0: every clip looks the same to the head."""
    names = read_classes(cfg.data.classes)
    dataset = ClipDataset(read_compact_manifest(cfg.data.train), names, Preprocessor(cfg.preprocessor(names)),
                          train=False, modalities=(stream,))
    inputs = torch.stack([dataset[i]["inputs"][stream] for i in range(len(dataset))])
    torch.manual_seed(0)
    # the paper's model (CLS readout, official init) on either config's inputs: this measures the inputs alone
    model = MBT(cfg.model.model_copy(update={"modalities": (stream,), "stem": "patch", "classifier": "token",
                                             "pool_per_stream": False, "weight_init": "official"})).eval()
    with torch.no_grad():
        features = model(**{stream: inputs}).features[stream]  # what the head reads (CLS or pooled tokens)
    mean = features.mean(0)
    return ((features - mean).pow(2).sum(1).mean() / mean.pow(2).sum()).item()


def test_default_inputs_look_alike_to_the_head_and_the_recipe_separates_them(short_set):
    default = _config(short_set)  # the tiny preset: AST statistics, a 4 s audio window over 2 s clips
    recipe = _config(short_set, "small-data")
    resolve_data_settings(recipe, read_compact_manifest(recipe.data.train))
    r_default, r_recipe = head_input_spread(default), head_input_spread(recipe)
    assert r_default < 0.1, r_default  # the stall: ~all of the head input is shared by every clip
    assert r_recipe > 3 * r_default, (r_default, r_recipe)


def test_fit_windows_and_dataset_statistics_are_resolved_from_the_training_clips(short_set):
    cfg = _config(short_set, "small-data")
    assert cfg.data.fit_windows and cfg.data.normalisation == "dataset" and cfg.data.spec_mean is None
    resolve_data_settings(cfg, read_compact_manifest(cfg.data.train))
    window = cfg.preprocessor()
    fit = fit_window(window, probe_durations(read_compact_manifest(cfg.data.train)), cfg.model.spec_patch[0])
    assert fit.audio_padding < 0.1 and fit.video_coverage > 0.9 and not fit.needs_note
    assert cfg.model.spec_frames % cfg.model.spec_patch[0] == 0 and cfg.model.spec_frames <= 200
    # the inputs have zero mean and unit variance over the training set
    names = read_classes(cfg.data.classes)
    dataset = ClipDataset(read_compact_manifest(cfg.data.train), names, Preprocessor(window), train=False,
                          modalities=("audio",))
    specs = torch.stack([dataset[i]["inputs"]["audio"] for i in range(len(dataset))])
    assert abs(specs.mean().item()) < 0.05 and abs(specs.std().item() - 1.0) < 0.05
    # resolving again (a resumed run) gives the same values; a config that holds them keeps them
    again = _config(short_set, "small-data")
    resolve_data_settings(again, read_compact_manifest(again.data.train))
    assert again.to_dict() == cfg.to_dict()


def test_a_config_left_to_the_data_refuses_to_build_a_preprocessor_before_it_is_resolved(short_set):
    from mbt.errors import ConfigError

    cfg = _config(short_set, None, "data.normalisation=dataset")
    with pytest.raises(ConfigError, match="measured when training starts"):
        cfg.preprocessor()


def test_data_check_tells_how_the_windows_fit_short_clips(short_set, capsys, tmp_path):
    from mbt.cli import main

    code = main(["data", "check", str(short_set / "train.csv"), "--jobs", "1", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert code == 0
    assert "input windows: clips last 2.00 s" in out and "of it padding" in out
    assert "--set model.spec_frames=192" in out and "small-data" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["window"]["audio_padding"] > 0.4 and report["window"]["fitting_settings"]["model.spec_frames"] == 192


def test_training_start_reports_the_fit_and_points_small_sets_to_the_recipe(short_set, tmp_path, caplog):
    from mbt.recipes.train import train

    cfg = _config(short_set, None, "model.depth=1", "model.fusion_layer=1", "model.image_size=32",
                  "model.spec_frames=400", "train.epochs=1", "train.batch_size=8", "train.num_workers=0")
    with caplog.at_level(logging.INFO, logger="mbt.train"):
        train(cfg, tmp_path / "run", progress=False, stop_after_steps=1)
    text = caplog.text
    assert "input windows: clips last 2.00 s" in text and "padding" in text
    assert "training from scratch on 16 clips" in text and "small-data" in text

    caplog.clear()
    fitted = _config(short_set, "small-data", "model.depth=1", "model.fusion_layer=1", "model.image_size=32",
                     "train.epochs=1", "train.batch_size=8", "train.num_workers=0")
    with caplog.at_level(logging.INFO, logger="mbt.train"):
        train(fitted, tmp_path / "fitted", progress=False, stop_after_steps=1)
    assert "data.fit_windows: model.spec_frames 400 -> 192" in caplog.text
    assert "data.fit_windows: model.spec_frames 400 -> 192" in (tmp_path / "fitted" / "train.log").read_text()
    assert "training from scratch" not in caplog.text  # the recipe's run is not pointed to itself
    saved = (tmp_path / "fitted" / "train_config.yaml").read_text()
    assert "spec_frames: 192" in saved and "spec_mean:" in saved and "spec_mean: null" not in saved
