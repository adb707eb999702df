"""Training past one process through the CLI: 2 "nodes" x 1 process on localhost with torchrun's c10d rendezvous;
DDP with gradient accumulation where every process skips the last micro-batch of each window; logs printed once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine_fixtures import CLASSES, toy_config, write_toy_set
from mbt.engine import distributed as D

REPO = Path(__file__).resolve().parents[1]
# Comparisons between runs need the same thread count in every process (CPU reductions depend on it).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
TIMEOUT = 600


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return root, write_toy_set(root, 12), write_toy_set(root, 5, name="val")


def _train(config: Path, out: Path) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "mbt.cli", "train", str(config), "--out", str(out), "--no-progress"],
                         env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    assert a.keys() == b.keys() and not any(k.startswith("module.") for k in b)
    for name in a:
        # the same global batches; only the order of floating-point sums differs (all-reduce vs batch mean)
        torch.testing.assert_close(b[name], a[name], atol=2e-5, rtol=1e-4, msg=name)


def _assert_logs_once(outputs: list[tuple[str, str]]) -> None:
    """Rank 0 alone prints INFO lines and the summary; another rank's lines are warnings or errors, prefixed."""
    stdout = "".join(out for out, _ in outputs)
    assert stdout.count("trained ") == 1, stdout
    lines = [line for _, err in outputs for line in err.splitlines()]
    assert any(line.startswith("INFO mbt.") for line in lines)  # rank 0 speaks (its epoch line)
    for line in lines:
        if "[rank " in line:
            assert line.startswith("[rank 1] WARNING ") or line.startswith("[rank 1] ERROR "), line
        assert not (" mbt." in line and "INFO" in line and line.startswith("[rank")), line


def test_two_nodes_with_c10d_rendezvous_match_single_process(toy, tmp_path):
    _, train, val = toy
    config = toy_config(tmp_path, train, val, epochs=2, optimizer="sgd", lr=0.05, batch_size=4)
    single, nodes = tmp_path / "single", tmp_path / "nodes"
    _train(config, single)

    port = _free_port()
    processes = []
    for node_rank in range(2):  # two torchrun agents, as on two machines, meeting at one rendezvous endpoint
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node_rank),
                   "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                   "--rdzv-id", f"mbt-test-{port}", "--max-restarts", "0",
                   "-m", "mbt.cli", "train", str(config), "--out", str(nodes), "--no-progress"]
        processes.append(subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        time.sleep(1.0)  # the first agent hosts the rendezvous store
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=TIMEOUT))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]

    (hashes,) = [r["rank_parameter_hashes"] for r in _records(nodes) if "rank_parameter_hashes" in r]
    assert len(hashes) == 2 and hashes[0] == hashes[1]  # both ranks hold identical parameters
    _assert_same_weights(single, nodes)
    _assert_logs_once(outputs)


def test_ddp_grad_accum_with_every_window_end_skipped_keeps_replicas_identical(toy, tmp_path):
    """Global batch 2 over 2 processes (1 clip each), grad_accum 2: the second micro-batch of every window holds
    unusable clips on both processes, so DDP's all-reduce (which runs in the window's last backward) never runs;
    the gradients accumulated under no_sync must still be averaged, and the result equal one process's training."""
    root, _, _ = toy
    seed, rows = 0, 16
    order = D.shard_indices(rows, 0, seed, D.DistInfo(rank=0, world_size=1), shuffle=True)
    # One process with local batch 2 reads order[2k], order[2k+1] as micro-batch k; two processes read order[2k]
    # (rank 0) and order[2k+1] (rank 1): the same clips. Micro-batches 1, 3, 5, 7 (each window's last) are bad.
    bad = {order[2 * k + r] for k in (1, 3, 5, 7) for r in (0, 1)}
    good = iter(range(8))
    lines = ["path,labels"]
    for row in range(rows):
        if row in bad:
            (root / "media" / f"junk_{row}.mp4").write_bytes(b"not a video" * (row + 1))
            lines.append(f"media/junk_{row}.mp4,{CLASSES[row % 2]}")
        else:
            index = next(good)
            lines.append(f"media/train_{index:03d}.mp4,{CLASSES[index % 2]}")
    manifest = root / "window_ends_bad.csv"
    manifest.write_text("\n".join(lines) + "\n")
    config = toy_config(tmp_path, manifest, None, epochs=1, optimizer="sgd", lr=0.05, batch_size=2, grad_accum=2,
                        seed=seed)

    single, double = tmp_path / "single", tmp_path / "ddp"
    _train(config, single)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "mbt.cli", "train", str(config), "--out", str(double), "--no-progress"],
                         env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr[-3000:]

    records = _records(double)
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 4  # 8 micro-batches per process, 4 windows, each updated from its first micro-batch
    (epoch,) = [r for r in records if "clips_trained" in r]
    assert epoch["clips_trained"] == 8 and epoch["skipped"] == 8
    (hashes,) = [r["rank_parameter_hashes"] for r in records if "rank_parameter_hashes" in r]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    _assert_same_weights(single, double)
    # both processes skipped clips; rank 1's warnings are marked as its own
    assert "[rank 1] WARNING mbt.train: skipped training clip" in run.stderr
    assert "\nWARNING mbt.train: skipped training clip" in "\n" + run.stderr
