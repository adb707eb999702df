"""Memory of a 2M-row manifest in training's data loading: the parent plus its DataLoader workers, counted as PSS
(proportional set size, /proc/PID/smaps_rollup: a page shared by k processes counts 1/k in each, so shared pages
count once in the sum), after one pass over every row, against the same measurement with an empty manifest.

Each measurement is a fresh child process: it reads a synthetic AudioSet-like manifest (multi-label, 527 classes,
1-3 labels a row) with `read_compact_manifest` (what training uses; `--rows-as list` measures `read_manifest`'s
list of row objects instead), builds a `ClipDataset` over it, and iterates a `DataLoader` with `--workers` forked,
persistent workers over all rows, in evaluation mode with a stand-in preprocessor that decodes nothing (so the
measurement is the manifest's, not the media's), but each item still looks up its row (path, times, line) and
builds its target, as real items do. PSS is read while the workers are still alive, after the pass.
Start-up: reading the manifest and building the dataset, in seconds.

    PYTHONPATH=src python benchmarks/manifest_memory.py [--rows 2000000] [--workers 8] [--rows-as compact|list]

Prints JSON and saves it to benchmarks/results/manifest_memory-cpu-<machine>.json (with --rows-as list:
manifest_memory_list-...).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from mbt.fileio import dumps as strict_dumps

GOAL_BYTES = 1.5e9  # above the empty-manifest baseline, parent + workers
GOAL_STARTUP_S = 10.0
NUM_CLASSES = 527


def class_names() -> list[str]:
    return [f"/m/{i:05x}" for i in range(NUM_CLASSES)]  # AudioSet-like machine ids


def write_manifest(path: Path, rows: int, seed: int = 0) -> None:
    """path,labels rows like AudioSet's: an 11-character video id and start time, 1-3 labels."""
    rng = np.random.default_rng(seed)
    names = class_names()
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
    with path.open("w", encoding="utf-8") as handle:
        handle.write("path,labels\n")
        for first in range(0, rows, 100_000):
            n = min(100_000, rows - first)
            ids = ["".join(chars) for chars in alphabet[rng.integers(0, len(alphabet), (n, 11))]]
            counts = rng.integers(1, 4, n)
            labels = rng.integers(0, NUM_CLASSES, (n, 3))
            handle.write("".join(f"train/{vid}_{30 * (i % 300)}.mp4,{';'.join(names[c] for c in lab[:k])}\n"
                                 for i, (vid, k, lab) in enumerate(zip(ids, counts, labels), first)))


def pss_bytes(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
            values[key] = int(rest.split()[0]) * 1024
    return {"rss": values["Rss"], "pss": values["Pss"], "uss": values["Private_Clean"] + values["Private_Dirty"]}


class StandInPreprocessor:
    """Decodes nothing: returns a one-number input. The dataset still reads the row (path, times) to call it."""

    def __call__(self, path, *, train, position=0.5, crop=1, start=None, end=None, modalities=(), generator=None):
        import torch

        return SimpleNamespace(inputs={m: torch.full((1,), float(len(str(path)))) for m in modalities},
                               warnings=(), video_padded=False, audio_padded=False, video_pad_fraction=0.0,
                               audio_pad_fraction=0.0)


def child(manifest: Path, workers: int, batch_size: int, rows_as: str) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from mbt.data.compact import read_compact_manifest
    from mbt.data.datasets import ClipDataset, collate
    from mbt.data.manifest import read_manifest

    torch.set_num_threads(1)
    started = time.perf_counter()
    rows = read_compact_manifest(manifest) if rows_as == "compact" else read_manifest(manifest)
    dataset = ClipDataset(rows, class_names(), StandInPreprocessor(), train=False, modalities=("audio",),
                          multi_label=True)
    startup = time.perf_counter() - started
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                        persistent_workers=workers > 0, multiprocessing_context="fork" if workers else None)
    iterator = iter(loader)
    seen, total, next_report = 0, len(dataset), 0.1
    pass_started = time.perf_counter()
    for batch in iterator:
        seen += len(batch["row"])
        if total and seen / total >= next_report:
            print(f"  {seen:,} / {total:,} rows ({time.perf_counter() - pass_started:.0f} s)", file=sys.stderr,
                  flush=True)
            next_report += 0.1
    pass_seconds = time.perf_counter() - pass_started
    processes = {"parent": pss_bytes(os.getpid())}
    for i, worker in enumerate(getattr(iterator, "_workers", [])):
        processes[f"worker{i}"] = pss_bytes(worker.pid)
    del iterator
    return {"rows": len(rows), "rows_seen": seen, "startup_seconds": round(startup, 2),
            "pass_seconds": round(pass_seconds, 1),
            "manifest_array_bytes": getattr(rows, "nbytes", None),
            "total_pss_bytes": sum(p["pss"] for p in processes.values()), "processes": processes}


def measure(manifest: Path, args) -> dict:
    command = [sys.executable, __file__, "--child", str(manifest), "--workers", str(args.workers),
               "--batch-size", str(args.batch_size), "--rows-as", args.rows_as]
    run = subprocess.run(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if run.returncode != 0:
        raise SystemExit(f"measurement of {manifest} failed (exit {run.returncode})")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--rows-as", choices=("compact", "list"), default="compact")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.child is not None:
        print(strict_dumps(child(args.child, args.workers, args.batch_size, args.rows_as)))
        return

    sys.path.insert(0, str(Path(__file__).parent))
    from train_step import machine_info, save_result

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        empty, full = Path(folder) / "empty.csv", Path(folder) / "full.csv"
        write_manifest(empty, 0)
        started = time.perf_counter()
        write_manifest(full, args.rows)
        print(f"wrote {args.rows:,} rows ({full.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
        manifest_bytes = full.stat().st_size
        baseline = measure(empty, args)
        print(f"empty manifest: {baseline['total_pss_bytes'] / 1e6:.0f} MB PSS", file=sys.stderr)
        result = measure(full, args)
    above = result["total_pss_bytes"] - baseline["total_pss_bytes"]
    output = {
        "benchmark": "manifest_memory",
        "machine": machine_info("cpu"),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "setup": {"rows": args.rows, "manifest_csv_bytes": manifest_bytes, "workers": args.workers,
                  "batch_size": args.batch_size, "rows_as": args.rows_as, "worker_start": "fork, persistent",
                  "classes": NUM_CLASSES, "labels_per_row": "1-3 (multi-label)",
                  "memory": "sum of /proc/PID/smaps_rollup Pss over the parent and its workers, after one pass"},
        "baseline_empty_manifest": baseline,
        "manifest": result,
        "pss_above_baseline_bytes": above,
        "pss_above_baseline_gb": round(above / 1e9, 3),
        "startup_seconds": result["startup_seconds"],
        "goal": f"pss_above_baseline <= {GOAL_BYTES / 1e9} GB and startup <= {GOAL_STARTUP_S} s",
        "goal_met": above <= GOAL_BYTES and result["startup_seconds"] <= GOAL_STARTUP_S,
    }
    save_result(output, args.out, "manifest_memory" if args.rows_as == "compact" else "manifest_memory_list", "cpu")


if __name__ == "__main__":
    main()
