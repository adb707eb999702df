"""Does the loader keep up with the GPU? Reads this machine's `train_step-cuda-*.json` and `loader-*.json` (written
by `benchmarks/gpu.sh`) and compares clips/s: the training step of mbt-base (bottleneck fusion, one GPU) against the
loader with all its workers, measured on the wall clock and as CPU time x workers, from original and from
transcoded media. Prints JSON and saves benchmarks/results/keeps_up-<machine>.json.

    PYTHONPATH=src python benchmarks/keeps_up.py --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
from pathlib import Path

from mbt.fileio import dumps as strict_dumps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, required=True, help="the batch train_step.py ran with")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    machine = socket.gethostname() or platform.machine()
    step_file, loader_file = args.results / f"train_step-cuda-{machine}.json", args.results / f"loader-{machine}.json"
    missing = [str(p) for p in (step_file, loader_file) if not p.exists()]
    if missing:
        raise SystemExit(f"missing results: {', '.join(missing)} (run benchmarks/gpu.sh)")
    step, loader = json.loads(step_file.read_text()), json.loads(loader_file.read_text())
    step_clips = args.batch_size / step["configs"]["bottleneck"]["median_step_seconds"]
    workers = loader["workers"]
    out = {"benchmark": "keeps_up", "machine": loader["machine"], "gpu": step["machine"].get("gpu"),
           "step_clips_per_s": round(step_clips, 1), "batch_size": args.batch_size, "loader_workers": workers,
           "finish_video_on_device_ms_per_clip": loader["loader"]["train_originals"].get(
               "finish_video_on_cuda_ms_per_clip")}
    for source in ("originals", "transcoded"):
        figures = loader["loader"][f"train_{source}"]
        wall = figures["wall_clips_per_s"]
        cores = figures["clips_per_s_per_core"] * workers
        out[source] = {"loader_wall_clips_per_s": wall, "loader_cpu_bound_clips_per_s": round(cores, 1),
                       "loader_over_step": round(wall / step_clips, 2), "keeps_up": wall >= step_clips}
    text = strict_dumps(out, indent=1)
    print(text)
    (args.results / f"keeps_up-{machine}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
