"""Train, evaluate, predict end to end through the CLI on generated mp4 files; exact resume after SIGKILL;
2-process DDP on CPU through torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine_fixtures import CLASSES, toy_config, write_toy_set
from mbt import MBT
from mbt.cli import main
from mbt.engine.evaluate import load_for_inference

REPO = Path(__file__).resolve().parents[1]
# Bit-identical comparisons between processes need the same thread count (CPU reductions depend on it).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    train = write_toy_set(root, 12)
    val = write_toy_set(root, 5, name="val")  # odd on purpose: 2-process evaluation must not drop a clip
    return root, train, val


@pytest.fixture(scope="module")
def trained(toy):
    root, train, val = toy
    config = toy_config(root, train, val, epochs=3, lr=3e-3)
    out = root / "run"
    assert main(["train", str(config), "--out", str(out), "--no-progress"]) == 0
    return out


def test_training_writes_a_pretrained_directory(trained):
    for name in ("model.safetensors", "config.json", "preprocessor.json", "train_config.yaml", "metrics.jsonl"):
        assert (trained / name).is_file(), name
    assert list((trained / "checkpoints").glob("step-*.pt"))
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 9  # 3 epochs x 3 batches of 4
    assert any("val_top1" in r for r in records)
    preprocessing = json.loads((trained / "preprocessor.json").read_text())
    assert preprocessing["class_names"] == CLASSES and preprocessing["fps"] == 8.0


def test_evaluate_predict_and_reload(trained, toy, tmp_path, capsys):
    root, _, val = toy
    metrics_file = tmp_path / "metrics.json"
    assert main(["evaluate", str(trained), "--manifest", str(val), "--clips", "2", "--json", str(metrics_file),
                 "--num-workers", "0", "--no-progress"]) == 0
    metrics = json.loads(metrics_file.read_text())
    assert metrics["num_videos"] == 5 and metrics["num_clips"] == 10 and metrics["num_skipped"] == 0
    assert 0.0 <= metrics["top1"] <= 1.0 and "top5" not in metrics  # 2 classes: a top 5 would always hold the truth

    capsys.readouterr()
    clip = root / "media" / "val_000.mp4"
    assert main(["predict", str(trained), str(clip), "--top-k", "2", "--clips", "1", "--json"]) == 0
    (prediction,) = json.loads(capsys.readouterr().out)
    assert sorted(entry["label"] for entry in prediction["labels"]) == sorted(CLASSES) and prediction["skipped"] is None
    assert sum(entry["score"] for entry in prediction["labels"]) == pytest.approx(1.0, abs=1e-4)

    model, preprocessor = load_for_inference(trained)
    sample = preprocessor(clip, train=False)
    x = {m: t.unsqueeze(0) for m, t in sample.inputs.items()}
    with torch.no_grad():
        logits = model(**x).logits
    scores = dict(zip(CLASSES, torch.softmax(logits[0], -1).tolist()))
    for entry in prediction["labels"]:
        assert entry["score"] == pytest.approx(scores[entry["label"]], abs=1e-5)
    model.save_pretrained(tmp_path / "copy")
    again = MBT.from_pretrained(tmp_path / "copy").eval()
    with torch.no_grad():
        assert torch.equal(again(**x).logits, logits)


def test_predict_without_audio_uses_video_with_a_warning(trained, tmp_path, capsys):
    from media_factory import write_av

    silent_film = tmp_path / "video_only.mp4"
    write_av(silent_film, fps=8, seconds=1.5, size=(64, 48), audio=False)
    capsys.readouterr()
    assert main(["predict", str(trained), str(silent_film), "--json"]) == 0
    (prediction,) = json.loads(capsys.readouterr().out)
    assert prediction["modalities"] == ["video"]
    assert any("no audio" in w for w in prediction["warnings"])


def test_evaluate_single_modality_runs_one_stream(trained, toy, tmp_path):
    _, _, val = toy
    for modality in ("audio", "video"):
        out = tmp_path / f"{modality}.json"
        assert main(["evaluate", str(trained), "--manifest", str(val), "--modalities", modality, "--clips", "1",
                     "--json", str(out), "--num-workers", "0", "--no-progress"]) == 0
        assert json.loads(out.read_text())["num_videos"] == 5


def _train_cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mbt.cli", "train", str(config), "--out", str(out), "--no-progress", *extra]


def test_resume_after_sigkill_is_bit_identical(toy, tmp_path):
    _, train, _ = toy
    # dropout-like randomness on (stochastic depth) and mixup on, so that RNG state must be restored too
    config = toy_config(tmp_path, train, None, epochs=6, checkpoint_every=2, mixup_alpha=0.5, keep_checkpoints=3)
    config.write_text(config.read_text().replace("drop_path_rate: 0.0", "drop_path_rate: 0.2"))

    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(config, reference), env=ENV, check=True, capture_output=True)

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(_train_cmd(config, interrupted), env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((interrupted / "checkpoints").glob("step-*.pt")) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "training ended before it could be interrupted"
    assert not (interrupted / "model.safetensors").exists()
    subprocess.run(_train_cmd(config, interrupted, "--resume"), env=ENV, check=True, capture_output=True)

    expected, resumed = load_file(reference / "model.safetensors"), load_file(interrupted / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
            "mbt.cli", *args]


def test_two_process_ddp_matches_single_process(toy, tmp_path):
    _, train, val = toy
    config = toy_config(tmp_path, train, None, epochs=2, optimizer="sgd", lr=0.05, batch_size=4)
    single, double = tmp_path / "single", tmp_path / "ddp"
    subprocess.run(_train_cmd(config, single), env=ENV, check=True, capture_output=True)
    run = subprocess.run(_torchrun("train", str(config), "--out", str(double), "--no-progress"), env=ENV,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in (double / "metrics.jsonl").read_text().splitlines()]
    (hashes,) = [r["rank_parameter_hashes"] for r in records if "rank_parameter_hashes" in r]
    assert len(hashes) == 2 and hashes[0] == hashes[1]  # both ranks hold identical parameters
    a, b = load_file(single / "model.safetensors"), load_file(double / "model.safetensors")
    assert not any(k.startswith("module.") for k in b)
    for name in a:
        # the same global batches; only the order of floating-point sums differs (all-reduce vs batch mean)
        torch.testing.assert_close(b[name], a[name], atol=2e-5, rtol=1e-4, msg=name)

    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert main(["evaluate", str(single), "--manifest", str(val), "--clips", "3", "--json", str(one),
                 "--num-workers", "0", "--no-progress"]) == 0
    run = subprocess.run(_torchrun("evaluate", str(single), "--manifest", str(val), "--clips", "3", "--json",
                                   str(two), "--num-workers", "0", "--no-progress"),
                         env=ENV, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    m1, m2 = json.loads(one.read_text()), json.loads(two.read_text())
    assert m1["num_videos"] == m2["num_videos"] == 5 and m1["num_clips"] == m2["num_clips"] == 15
    for key in ("top1",):
        assert m1[key] == pytest.approx(m2[key])
