"""Start-up cost of the command line: wall time and peak RSS of `mbt --help`, `mbt --version` and every
`mbt COMMAND --help`, each run several times in a fresh process (median reported), next to a bare `python -c pass`
and a `python -c "import torch"` for scale. The target: every --help under 0.5 s.

Runs `python -m mbt` with this checkout's src/ first on PYTHONPATH, and the installed `mbt` script beside the
interpreter when there is one. Prints JSON and saves it to benchmarks/results/cli_startup-cpu-<machine>.json.

    PYTHONPATH=src python benchmarks/cli_startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from mbt.cli import COMMANDS  # noqa: E402  (argparse only: no torch)

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


def measure(argv: list[str], runs: int) -> dict:
    """Median wall seconds and peak RSS (MB) of `argv` over `runs` fresh processes."""
    walls, peaks = [], []
    for _ in range(runs):
        start = time.perf_counter()
        process = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        walls.append(time.perf_counter() - start)
        peaks.append(usage.ru_maxrss / 1024)  # Linux: kilobytes
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited with {process.returncode}")
    return {"wall_s_median": round(statistics.median(walls), 4), "wall_s_max": round(max(walls), 4),
            "peak_rss_mb_median": round(statistics.median(peaks), 1), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    python = [sys.executable]
    cases = {"python -c pass": [*python, "-c", "pass"], "python -c 'import torch'": [*python, "-c", "import torch"],
             "mbt --help": [*python, "-m", "mbt", "--help"], "mbt --version": [*python, "-m", "mbt", "--version"]}
    cases |= {f"mbt {name} --help": [*python, "-m", "mbt", name, "--help"] for name in COMMANDS}
    script = shutil.which("mbt", path=str(Path(sys.executable).parent))
    if script:
        cases["mbt --help (installed script)"] = [script, "--help"]
    results = {}
    for name, argv in cases.items():
        results[name] = measure(argv, args.runs)
        print(f"{name:34s} {results[name]['wall_s_median']:.3f} s  {results[name]['peak_rss_mb_median']:.0f} MB",
              file=sys.stderr)
    helps = {k: v for k, v in results.items() if k.startswith("mbt ") and "help" in k}
    slowest = max(helps, key=lambda k: helps[k]["wall_s_median"])
    output = {
        "benchmark": "cli_startup",
        "note": "wall time and peak RSS of fresh processes; median of --runs",
        "results": results,
        "slowest_help": slowest,
        "slowest_help_wall_s": helps[slowest]["wall_s_median"],
        "all_help_under_0_5_s": all(v["wall_s_median"] < 0.5 for v in helps.values()),
    }
    from train_step import machine_info, save_result  # imports torch: only now, for the machine description

    output["machine"] = machine_info("cpu")
    save_result(output, args.out, "cli_startup", "cpu")


if __name__ == "__main__":
    main()
