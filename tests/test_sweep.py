"""`mbt sweep`: one trained and evaluated point per grid cell, a CSV row each, plots, and resumption without
retraining finished points."""

from __future__ import annotations

import csv

import pytest

import mbt.recipes.train
from engine_fixtures import toy_config, write_toy_set
from mbt.cli import main
from mbt.config import ConfigError
from mbt.model.mbt import WEIGHTS_NAME
from mbt.recipes.sweep import parse_over, run_sweep, sweep_points


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    train = write_toy_set(root, 8)
    val = write_toy_set(root, 4, name="val")
    # depth 2: fusion_layer 2 is late fusion
    config = toy_config(root, train, val, epochs=1, checkpoint_every=1)
    return root, config


FAST = ["data.eval_clips=1"]  # one evaluation view per clip keeps the decoding short


def _rows(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _forbid_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a finished point was trained again")
    monkeypatch.setattr(mbt.recipes.train, "train", fail)


def test_sweep_trains_every_point_writes_rows_and_plots_and_skips_them_next_time(toy, tmp_path, monkeypatch):
    _, config = toy
    out = tmp_path / "fusion"
    args = ["sweep", str(config), "--over", "model.fusion_layer=1,2", "--over", "model.fusion=vanilla,bottleneck",
            "--set", "data.eval_clips=1", "--out", str(out), "--modalities", "video,audio", "--modalities", "audio",
            "--no-progress"]
    assert main(args) == 0
    rows = _rows(out / "results.csv")
    assert [(r["model.fusion_layer"], r["model.fusion"]) for r in rows] == [
        ("1", "vanilla"), ("1", "bottleneck"), ("2", "vanilla"), ("2", "bottleneck")]
    for r in rows:
        assert 0.0 <= float(r["top1"]) <= 1.0 and 0.0 <= float(r["top1[audio]"]) <= 1.0
        assert int(r["num_clips"]) == 4 and int(r["params"]) > 0 and float(r["train_seconds"]) > 0
        assert (out / "runs" / r["point"] / WEIGHTS_NAME).is_file()
    gflops = {(r["model.fusion_layer"], r["model.fusion"]): float(r["gflops"]) for r in rows}
    # mid fusion costs more than late fusion (attention over the other stream / bottleneck tokens); at
    # fusion_layer = depth both fusions are the same late fusion
    assert gflops["1", "vanilla"] > gflops["2", "vanilla"] and gflops["1", "bottleneck"] > gflops["2", "bottleneck"]
    assert gflops["2", "vanilla"] == pytest.approx(gflops["2", "bottleneck"])
    assert (out / "top1_vs_fusion_layer.png").stat().st_size > 10_000

    _forbid_training(monkeypatch)
    first = (out / "results.csv").read_text()
    assert main(args) == 0
    assert (out / "results.csv").read_text() == first


def test_a_finished_model_without_a_row_is_evaluated_not_retrained(toy, tmp_path, monkeypatch):
    _, config = toy
    out = tmp_path / "bottlenecks"
    over = [parse_over("model.num_bottlenecks=1,2")]
    rows = run_sweep(config, over, out, overrides=FAST, progress=False)
    assert [r["model.num_bottlenecks"] for r in rows] == [1, 2]
    assert (out / "top1_vs_num_bottlenecks.png").is_file()
    (out / "results.csv").write_text((out / "results.csv").read_text().splitlines()[0] + "\n")  # rows lost

    _forbid_training(monkeypatch)
    again = run_sweep(config, over, out, overrides=FAST, progress=False)
    assert [r["top1"] for r in again] == [r["top1"] for r in rows]
    assert len(_rows(out / "results.csv")) == 2


def test_a_half_trained_point_resumes_from_its_checkpoint(toy, tmp_path):
    _, config = toy
    out = tmp_path / "half"
    over = [parse_over("model.fusion_layer=1")]
    (point,) = sweep_points(config, over, FAST)
    mbt.recipes.train.train(point.config, out / "runs" / point.name, progress=False, stop_after_steps=1)
    assert not (out / "runs" / point.name / WEIGHTS_NAME).exists()

    (row,) = run_sweep(config, over, out, overrides=FAST, progress=False)
    assert row["resumed"] is True
    assert row["steps"] == 2  # 8 clips, batch 4, one epoch: the interrupted step plus the one left


def test_a_run_dir_trained_with_another_config_is_refused(toy, tmp_path):
    _, config = toy
    out = tmp_path / "changed"
    over = [parse_over("model.fusion_layer=2")]
    run_sweep(config, over, out, overrides=FAST, progress=False)
    with pytest.raises(ConfigError, match="train.lr"):
        run_sweep(config, over, out, overrides=[*FAST, "train.lr=0.5"], progress=False)


def test_a_bad_swept_key_fails_before_anything_trains(toy, tmp_path):
    _, config = toy
    with pytest.raises(ConfigError, match="fusion_layr"):
        run_sweep(config, [parse_over("model.fusion_layer=1"), parse_over("model.fusion_layr=1")], tmp_path / "x")
    with pytest.raises(ConfigError, match="fusion_layer"):
        run_sweep(config, [parse_over("model.fusion_layer=1,9")], tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="--over"):
        parse_over("model.fusion_layer")
