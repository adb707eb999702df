"""kill -9 at random moments of a training run, many times, never leaves a run that `--resume` cannot continue, and
the resumed run ends bit-identical to an uninterrupted one.

A tiny model trains on generated clips with a checkpoint after every step. Each round starts `mbt train --resume`
(the first one without), then SIGKILLs it: half the rounds the moment a checkpoint's temporary file appears (mid
write), the others after a random delay. After the last round a final `--resume` runs to the end; its weights are
compared with an uninterrupted run's. Prints JSON and saves it to benchmarks/results/kill_resume-cpu-<machine>.json.

    python benchmarks/kill_resume.py --kills 20
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests"), str(REPO / "benchmarks")]
from mbt.fileio import dumps as strict_dumps  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}


def _train(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mbt.cli", "train", str(config), "--out", str(out), "--no-progress", *extra]


def _kill_once(config: Path, out: Path, rng: random.Random, resume: bool, timeout: float) -> dict:
    process = subprocess.Popen(_train(config, out, *(["--resume"] if resume else [])), env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = out / "checkpoints"
    mid_write = rng.random() < 0.5
    deadline = time.time() + timeout
    delay = rng.uniform(0.0, 3.0)
    started = None
    while process.poll() is None and time.time() < deadline:
        if folder.is_dir():
            names = [p.name for p in folder.iterdir()]
            if mid_write and any(n.endswith(".tmp") for n in names):
                break
            if not mid_write and any(n.endswith(".pt") for n in names):
                started = started or time.time()
                if time.time() - started >= delay:
                    break
        time.sleep(0.001)
    finished = process.poll() is not None
    process.send_signal(signal.SIGKILL)
    process.wait()
    return {"mid_write": mid_write, "finished_before_kill": finished}


def run(kills: int, seed: int, work: Path, timeout: float = 300.0) -> dict:
    import torch
    from safetensors.torch import load_file

    from engine_fixtures import toy_config, write_toy_set

    train = write_toy_set(work, 12, seconds=1.0)
    config = toy_config(work, train, epochs=max(4, kills // 2 + 2), checkpoint_every=1, keep_checkpoints=2,
                        mixup_alpha=0.5)
    reference = work / "reference"
    subprocess.run(_train(config, reference), env=ENV, check=True, capture_output=True)
    interrupted = work / "interrupted"
    rng = random.Random(seed)
    rounds = []
    for i in range(kills):
        rounds.append(_kill_once(config, interrupted, rng, resume=i > 0, timeout=timeout))
        print(f"kill {i + 1}/{kills}: {rounds[-1]}", file=sys.stderr, flush=True)
    final = subprocess.run(_train(config, interrupted, "--resume"), env=ENV, capture_output=True, text=True)
    expected = load_file(reference / "model.safetensors")
    resumed = load_file(interrupted / "model.safetensors") if final.returncode == 0 else {}
    identical = final.returncode == 0 and expected.keys() == resumed.keys() and all(
        torch.equal(expected[k], resumed[k]) for k in expected)
    return {"kills": kills, "seed": seed, "mid_write_kills": sum(r["mid_write"] for r in rounds),
            "runs_finished_before_their_kill": sum(r["finished_before_kill"] for r in rounds),
            "final_resume_exit_code": final.returncode, "final_resume_stderr_tail": final.stderr[-400:],
            "bit_identical_to_uninterrupted": identical}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here (tests use it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.kills, args.seed, Path(tmp))
    from train_step import machine_info, save_result

    result["machine"] = machine_info("cpu")
    if args.json:

        args.json.write_text(strict_dumps(result))
    else:
        save_result(result, args.out, "kill_resume", "cpu")
    sys.exit(0 if result["bit_identical_to_uninterrupted"] else 1)


if __name__ == "__main__":
    main()
