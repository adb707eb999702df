"""Long runs survive bad data, values and disks: runs are never mixed, resume falls back to a checkpoint that
verifies and refuses a changed computation, non-finite losses skip their update, huge models are refused before
they are built, damaged weights and unwritable outputs are one line with an exit code."""

from __future__ import annotations

import errno
import json
import logging
import struct
from pathlib import Path

import pytest
import torch
import yaml

from engine_fixtures import toy_config, write_toy_set
from mbt import MBT
from mbt.cli import main
from mbt.config import load_config
from mbt.engine.checkpoint import list_checkpoints
from mbt.engine.train import TrainState, epoch_loader, micro_step, optimizer_step, setup_run
from mbt.errors import DataError, OutputError
from mbt.fileio import write_json


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliable")
    train = write_toy_set(root, 8, seconds=1.0)
    return root, train


def _config(root: Path, train: Path, name: str, **overrides) -> Path:
    path = toy_config(root, train, epochs=2, checkpoint_every=1, keep_checkpoints=4, **overrides)
    return path.rename(root / f"{name}.yaml")


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("mbt")]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ run folders
def test_a_folder_holding_a_run_is_refused_unless_resume_or_overwrite(toy, capsys):
    root, train = toy
    config, out = _config(root, train, "mix"), root / "mix-run"
    assert main(["train", str(config), "--out", str(out), "--no-progress"]) == 0
    first = _metrics(out)
    capsys.readouterr()
    assert main(["train", str(config), "--out", str(out), "--no-progress"]) == 2
    assert "--resume" in _one_line(capsys.readouterr().err)
    assert _metrics(out) == first  # untouched

    assert main(["train", str(config), "--out", str(out), "--no-progress", "--overwrite"]) == 0
    aside = [p for p in root.iterdir() if p.name.startswith("mix-run.replaced-")]
    assert len(aside) == 1 and _metrics(aside[0]) == first  # the old run moved aside whole
    steps = [r["step"] for r in _metrics(out) if "loss" in r]
    assert steps == sorted(steps) and len(steps) == len([r for r in first if "loss" in r])  # one run, not two


def test_an_existing_file_or_unwritable_out_is_one_line_with_exit_3(toy, tmp_path, capsys):
    root, train = toy
    config = _config(root, train, "files")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for out in (blocker, blocker / "run"):
        assert main(["train", str(config), "--out", str(out), "--no-progress"]) == 3
        assert str(blocker) in _one_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------------------------ resume
def _trained(root: Path, train: Path, name: str) -> tuple[Path, Path]:
    config, out = _config(root, train, name), root / f"{name}-run"
    assert main(["train", str(config), "--out", str(out), "--no-progress"]) == 0
    return config, out


@pytest.mark.parametrize("damage", ["truncate", "zero", "flip", "digest"])
def test_resume_falls_back_to_the_newest_checkpoint_that_verifies(toy, damage, caplog):
    caplog.set_level(logging.INFO)
    root, train = toy
    config, out = _trained(root, train, f"fall-{damage}")
    final = MBT.from_pretrained(out).state_dict()
    checkpoints = list_checkpoints(out)
    newest = checkpoints[-1]
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "zero":
        newest.write_bytes(b"")
    elif damage == "flip":
        middle = len(data) // 2
        newest.write_bytes(data[:middle] + bytes([data[middle] ^ 0x40]) + data[middle + 1:])
    else:  # the digest file itself is damaged
        newest.with_name(newest.name + ".sha256").write_text("0" * 64)
    # one more epoch: resume from the checkpoint before the damaged one and train on
    assert main(["train", str(config), "--out", str(out), "--no-progress", "--resume",
                 "--set", "train.epochs=3"]) == 0
    assert any("skipped checkpoint" in r.getMessage() and newest.name in r.getMessage() for r in caplog.records)
    assert any(f"resumed from {checkpoints[-2]}" in r.getMessage() for r in caplog.records)
    resumed = MBT.from_pretrained(out).state_dict()
    assert any(not torch.equal(final[k], resumed[k]) for k in final)  # trained further
    assert all(torch.isfinite(v).all() for v in resumed.values())


def test_resume_refuses_a_changed_computation_and_accepts_a_longer_run(toy, capsys):
    root, train = toy
    config, out = _trained(root, train, "changed")
    saved = (out / "train_config.yaml").read_text()
    for change in ("train.lr=0.01", "train.batch_size=2", "train.optimizer=sgd", "model.depth=3",
                   "data.flip=false"):
        capsys.readouterr()
        assert main(["train", str(config), "--out", str(out), "--no-progress", "--resume", "--set", change]) == 2
        assert change.split("=")[0] in _one_line(capsys.readouterr().err)
        assert (out / "train_config.yaml").read_text() == saved  # not overwritten
    assert main(["train", str(config), "--out", str(out), "--no-progress", "--resume", "--set",
                 "train.epochs=3", "--set", "train.num_workers=1"]) == 0
    updated = yaml.safe_load((out / "train_config.yaml").read_text())
    assert updated["train"]["epochs"] == 3 and updated["train"]["lr"] == yaml.safe_load(saved)["train"]["lr"]


def test_resume_with_every_checkpoint_damaged_is_one_line_with_exit_1(toy, capsys):
    root, train = toy
    config, out = _trained(root, train, "all-bad")
    for path in list_checkpoints(out):
        path.write_bytes(b"garbage")
    capsys.readouterr()
    assert main(["train", str(config), "--out", str(out), "--no-progress", "--resume"]) == 1
    assert "verifies" in _one_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------------------------ bad values
def _nan_batch(run, batch):
    poisoned = {k: v for k, v in batch.items() if k != "colour"}
    inputs = dict(batch["inputs"])
    if "colour" in batch:  # the loader's uint8 crops (B, T, S, S, 3) cannot hold a NaN: the model's floats can
        inputs["video"] = inputs["video"].permute(0, 4, 1, 2, 3).float()
    poisoned["inputs"] = {m: torch.full_like(x, float("nan")) for m, x in inputs.items()}
    return poisoned


def test_a_non_finite_loss_skips_its_update_and_too_many_in_a_row_stop_the_run(toy, tmp_path, caplog):
    root, train = toy
    cfg = load_config(_config(root, train, "nan", max_bad_steps=3))
    run = setup_run(cfg, tmp_path / "run", progress=False)
    state = TrainState()
    batch = next(iter(epoch_loader(run, 0, 0)[0]))
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    for _ in range(2):
        assert micro_step(run, _nan_batch(run, batch), state, sync=True) == 0
        assert optimizer_step(run, state) is None  # no update
    assert state.step == 0 and all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
    assert any("non-finite loss" in r.getMessage() and "train_000.mp4" in r.getMessage() for r in caplog.records)
    micro_step(run, batch, state, sync=True)  # a good update resets the count
    assert optimizer_step(run, state) is not None and state.step == 1 and state.bad_steps == 0
    with pytest.raises(DataError, match="max_bad_steps"):
        for _ in range(3):
            micro_step(run, _nan_batch(run, batch), state, sync=True)
            optimizer_step(run, state)


def test_a_run_where_every_clip_is_unusable_fails_with_the_reasons(tmp_path, capsys):
    (tmp_path / "media").mkdir()
    rows = ["path,labels"]
    for i in range(4):
        (tmp_path / "media" / f"bad{i}.mp4").write_bytes(b"not a video at all" * (i + 1))
        rows.append(f"media/bad{i}.mp4,{'bright' if i % 2 else 'dark'}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "classes.txt").write_text("bright\ndark\n")
    config = toy_config(tmp_path, tmp_path / "train.csv", epochs=1)
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "no usable training clip" in line and "4" in line
    assert not (tmp_path / "run" / "model.safetensors").exists()
    records = _metrics(tmp_path / "run")
    assert not any("loss" in r for r in records)  # no step counted
    assert records[-1]["skipped"] == 4 and sum(records[-1]["skipped_by_kind"].values()) == 4


def test_skip_counts_by_kind_reach_the_metrics_log(toy, tmp_path):
    root, train = toy
    rows = train.read_text().splitlines()
    (root / "media" / "broken.mp4").write_bytes(b"\x00" * 100)
    mixed = root / "mixed.csv"
    mixed.write_text("\n".join(rows + ["media/broken.mp4,bright", "media/missing.mp4,dark"]) + "\n")
    config = toy_config(root, mixed, epochs=1, batch_size=2)
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    epoch = [r for r in _metrics(tmp_path / "run") if "skipped_by_kind" in r]
    assert len(epoch) == 1 and epoch[0]["skipped"] == 2 and epoch[0]["clips_trained"] == 8
    assert isinstance(epoch[0]["padded"], int)


# ------------------------------------------------------------------------------------------------ sizes, weights
def test_a_huge_model_is_refused_before_it_is_built(toy, capsys):
    root, train = toy
    config = _config(root, train, "huge")
    assert main(["train", str(config), "--out", str(root / "huge-run"), "--no-progress",
                 "--set", "model.depth=100000", "--set", "model.width=1024", "--set", "model.num_heads=4",
                 "--set", "model.mlp_dim=4096"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "parameters" in line and "GiB" in line


def test_a_config_json_asking_for_a_huge_model_fails_before_it_is_built(toy, tmp_path, capsys):
    root, train = toy
    _, out = _trained(root, train, "big-json")
    values = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**values, "depth": 100000}))
    with pytest.raises(ValueError, match="parameters"):
        MBT.from_pretrained(out)


def _poison_first_float(weights: Path) -> str:
    data = bytearray(weights.read_bytes())
    header_size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_size])
    name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    start = 8 + header_size + header[name]["data_offsets"][0]
    data[start:start + 4] = struct.pack("<f", float("nan"))
    weights.write_bytes(bytes(data))
    return name


def test_damaged_or_truncated_weights_are_one_line_naming_the_file(toy, capsys):
    root, train = toy
    _, out = _trained(root, train, "weights")
    clip = next((root / "media").glob("train_000.mp4"))
    weights = out / "model.safetensors"
    original = weights.read_bytes()
    name = _poison_first_float(weights)
    capsys.readouterr()
    assert main(["predict", str(out), str(clip)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert name in line and "non-finite" in line
    for damaged in (original[: len(original) // 2], b"this is not a safetensors file"):
        weights.write_bytes(damaged)
        assert main(["predict", str(out), str(clip)]) == 1
        assert "model.safetensors" in _one_line(capsys.readouterr().err)
    weights.write_bytes(original)


# ------------------------------------------------------------------------------------------------ disks
def test_a_full_disk_during_a_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("mbt.fileio.os.fsync", full)
    target = tmp_path / "out.json"
    with pytest.raises(OutputError, match="no space left"):
        write_json(target, {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_checkpointing_is_one_line_with_exit_3(toy, tmp_path, monkeypatch, capsys):
    root, train = toy
    config = _config(root, train, "disk")
    real_fsync = __import__("os").fsync

    def full_on_checkpoints(fd):
        if "checkpoints" in __import__("os").readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr("mbt.fileio.os.fsync", full_on_checkpoints)
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 3
    line = _one_line(capsys.readouterr().err)
    assert "no space left" in line and "checkpoint" in line
    leftovers = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_evaluate_checks_its_outputs_first_and_fails_on_all_bad_clips(toy, tmp_path, capsys):
    root, train = toy
    _, out = _trained(root, train, "eval")
    capsys.readouterr()
    assert main(["evaluate", str(out), "--manifest", str(train), "--json", str(tmp_path), "--no-progress"]) == 3
    assert "is a directory" in _one_line(capsys.readouterr().err)
    bad = tmp_path / "bad.csv"
    (tmp_path / "x.mp4").write_bytes(b"junk")
    bad.write_text("path,labels\nx.mp4,bright\n")
    assert main(["evaluate", str(out), "--manifest", str(bad), "--no-progress", "--num-workers", "0"]) == 1
    assert "no clip could be evaluated" in _one_line(capsys.readouterr().err)


def test_kill_9_at_random_moments_never_leaves_a_run_resume_cannot_continue(tmp_path):
    # the benchmark does this 20 times (benchmarks/kill_resume.py); here 3 kills, one of them mid-write at least
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "kill_resume.py"
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(script), "--kills", "3", "--seed", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    result = json.loads(out.read_text())
    assert result["final_resume_exit_code"] == 0, result["final_resume_stderr_tail"]
    assert result["bit_identical_to_uninterrupted"], done.stderr[-2000:]
    assert result["mid_write_kills"] >= 1
