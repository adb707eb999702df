"""The typed run config: every bad value, key or file is one line naming it (exit 2), and the schema documents
itself (`mbt config show`, `mbt config keys`)."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from mbt.cli import main
from mbt.config import ConfigError, build_config, load_config

# (--set item, text the one-line error must contain)
BAD_OVERRIDES = [
    # the holes found by the issue
    ("train.lr=.inf", "train.lr"),
    ("train.lr=.nan", "train.lr"),
    ("train.weight_decay=-5", "train.weight_decay"),
    ("train.seed=-1", "train.seed"),
    ("data.sample_rate=1", "data.sample_rate"),
    ("model.spec_patch=[a,b]", "model.spec_patch[0]"),
    ("data.scale_jitter=[a,b]", "data.scale_jitter[0]"),
    ("data.eval_clips=0", "data.eval_clips"),
    # more
    ("train.lr=0", "train.lr"),
    ("train.lr=abc", "train.lr"),
    ("train.epochs=2.5", "train.epochs"),
    ("train.epochs=true", "train.epochs"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.optimizer=adam", "train.optimizer"),
    ("train.precision=fp16", "train.precision"),
    ("train.label_smoothing=1.0", "train.label_smoothing"),
    ("train.momentum=-0.1", "train.momentum"),
    ("train.grad_accum=0", "train.grad_accum"),
    ("train.num_workers=-2", "train.num_workers"),
    ("train.mixup_per_modality=yes please", "train.mixup_per_modality"),
    ("train.lrr=0.1", "did you mean train.lr?"),
    ("model.fusion=early", "model.fusion"),
    ("model.fusoin=vanilla", "did you mean model.fusion?"),
    ("model.classifier=cls", "model.classifier"),
    ("model.fusion_layer=99", "model.fusion_layer"),
    ("model.fusion_layer=-1", "model.fusion_layer"),
    ("model.num_heads=5", "model.num_heads"),
    ("model.modalities=[video, smell]", "model.modalities[1]"),
    ("model.modalities=[audio, audio]", "model.modalities"),
    ("model.modalities=video", "model.modalities"),
    ("model.drop_path_rate=1.0", "model.drop_path_rate"),
    ("model.preset=mbt-huge", "model.preset"),
    ("model.spec_patch=[16]", "model.spec_patch"),
    ("model.class_splits=[3, 4]", "model.class_splits"),
    ("data.audio_frontend=mfcc", "data.audio_frontend"),
    ("data.normalisation=custom", "data.spec_std"),
    ("data.spec_std=0", "data.spec_std"),
    ("data.scale_jitter=[1.5, 1.0]", "data.scale_jitter"),
    ("data.scale_jitter=[0.9, 1.1, 1.3]", "data.scale_jitter"),
    ("data.eval_crops=2", "data.eval_crops"),
    ("data.color_aug_prob=1.5", "data.color_aug_prob"),
    ("data.fps=0", "data.fps"),
    ("data.on_missing_modality=ignore", "data.on_missing_modality"),
    ("data.frame_stride=[1]", "data.frame_stride"),
    ("tran.lr=0.1", "did you mean train?"),
    ("train.lr", "train.lr"),
    ("lr=0.1", "lr"),
    ("train.lr=[1, 2", "cannot parse value"),
]


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err


def _assert_one_line(err: str, needle: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize(("item", "needle"), BAD_OVERRIDES, ids=[item for item, _ in BAD_OVERRIDES])
def test_a_bad_override_is_one_line_naming_the_key(capsys, item, needle):
    code, err = _run(capsys, "config", "show", "mbt-tiny", "--set", item)
    assert code == 2
    _assert_one_line(err, needle)


BAD_FILES = [
    ("model: 3\n", "model"),
    ("- a\n- b\n", "expected a mapping"),
    ("42\n", "expected a mapping"),
    ("train:\n  lr: 0.1\n  lr: 0.2\n", "twice"),
    ("train: [1, 2]\n", "train"),
    ("trian:\n  lr: 0.1\n", "did you mean train?"),
    ("model:\n  preset: mbt-tiny\n  depht: 3\n", "did you mean model.depth?"),
    ("train:\n  lr: 0.1\n bad indent: 1\n", "not valid YAML"),
    ("data:\n  scale_jitter: [a, b]\n", "data.scale_jitter[0]"),
]


@pytest.mark.parametrize(("text", "needle"), BAD_FILES, ids=[f"file{i}" for i in range(len(BAD_FILES))])
def test_a_bad_yaml_file_is_one_line_naming_the_file(tmp_path, capsys, text, needle):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    code, err = _run(capsys, "config", "show", str(path))
    assert code == 2
    _assert_one_line(err, needle)
    assert str(path) in err or needle in err


def test_a_directory_missing_file_or_unreadable_file_as_config_is_one_line(tmp_path, capsys, monkeypatch):
    code, err = _run(capsys, "train", str(tmp_path), "--out", str(tmp_path / "out"))
    assert code == 2
    _assert_one_line(err, "is a directory")
    code, err = _run(capsys, "train", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out"))
    assert code == 2
    _assert_one_line(err, "nope.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    code, err = _run(capsys, "config", "show", str(binary))
    assert code == 2
    _assert_one_line(err, "binary.yaml")
    locked = tmp_path / "locked.yaml"
    locked.write_text("train:\n  lr: 0.1\n")

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(locked), "read_text", denied)  # root reads any file: simulate the OS refusing
    code, err = _run(capsys, "config", "show", str(locked))
    assert code == 2
    _assert_one_line(err, "Permission denied")


def test_config_show_prints_the_resolved_config_that_training_saves(capsys, tmp_path):
    code = main(["config", "show", "audioset", "--set", "train.lr=0.25", "--set", "model.fusion_layer=4"])
    assert code == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["model"]["preset"] == "mbt-base" and shown["model"]["fusion_layer"] == 4
    assert shown["train"]["lr"] == 0.25 and shown["model"]["multi_label"] is True
    # what `config show` prints is a config file that builds the same run
    path = tmp_path / "shown.yaml"
    path.write_text(yaml.safe_dump(shown))
    assert load_config(path) == load_config("audioset", ["train.lr=0.25", "model.fusion_layer=4"])


def test_config_keys_lists_every_key_with_type_default_and_help(capsys):
    assert main(["config", "keys", "--json"]) == 0
    keys = {d["key"]: d for d in json.loads(capsys.readouterr().out)}
    cfg = build_config()
    for section in ("model", "data", "train"):
        for name in getattr(cfg, section).to_dict():
            assert f"{section}.{name}" in keys, name
    assert keys["train.lr"]["type"] == "float > 0" and keys["train.lr"]["default"] == cfg.train.lr
    assert keys["train.optimizer"]["type"] == "'sgd' | 'adamw'"
    assert keys["model.depth"]["default"] == cfg.model.depth  # the default preset's value
    assert all(d["help"] for d in keys.values()), [k for k, d in keys.items() if not d["help"]]
    assert main(["config", "keys"]) == 0
    assert "train.lr" in capsys.readouterr().out


def test_every_key_name_of_before_the_schema_still_works():
    # every key the hand-written config had, set to a valid non-default value
    items = ["model.depth=4", "model.fusion_layer=2", "model.num_bottlenecks=8", "model.fusion=vanilla",
             "model.share_weights=true", "model.classifier=gap", "model.spec_patch=[16, 16]",
             "data.fps=30", "data.frame_stride=1", "data.short_side=128", "data.sample_rate=22050",
             "data.audio_frontend=logmel", "data.normalisation=scenic", "data.scale_jitter=[1, 1.2]",
             "data.flip=false", "data.color_aug_prob=0.5", "data.color_drop_prob=0", "data.freq_mask_count=2",
             "data.freq_mask_width=24", "data.time_mask_count=1", "data.time_mask_width=10", "data.eval_clips=2",
             "data.eval_crops=3", "data.on_missing_modality=error", "data.cache=true", "train.epochs=3",
             "train.batch_size=8", "train.lr=0.5", "train.optimizer=sgd", "train.momentum=0.8",
             "train.weight_decay=0", "train.warmup_epochs=1", "train.grad_clip=0", "train.label_smoothing=0.3",
             "train.mixup_alpha=0.5", "train.mixup_per_modality=true", "train.precision=bf16",
             "train.grad_accum=2", "train.seed=7", "train.checkpoint_every=10", "train.keep_checkpoints=3",
             "train.num_workers=0", "train.eval_every_epochs=2", "train.balanced_sampler=true",
             "train.init_from=weights.npz"]
    cfg = build_config(None, items)
    assert cfg.data.scale_jitter == (1.0, 1.2) and cfg.train.optimizer == "sgd" and cfg.model.classifier == "gap"
    assert isinstance(cfg.data.fps, float) and cfg.train.init_from == "weights.npz"


def test_assignment_is_validated_too():
    cfg = build_config()
    with pytest.raises(ValueError, match="num_classes"):
        cfg.model.num_classes = 0


def test_relative_manifest_paths_resolve_against_the_yaml_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "run.yaml"
    path.write_text("data:\n  train: train.csv\n  classes: ../classes.txt\n")
    cfg = load_config(path)
    assert cfg.data.train == os.path.realpath(tmp_path / "sub" / "train.csv")
    assert cfg.data.classes == os.path.realpath(tmp_path / "classes.txt")


def test_errors_are_config_errors_for_library_users():
    with pytest.raises(ConfigError, match=r"^train\.lr: must be > 0"):
        build_config({"train": {"lr": -1}})
