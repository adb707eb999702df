"""`mbt demo [--out DIR] [--quick]`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train late / vanilla-mid / bottleneck-mid fusion on the embedded demo set",
                       description="Builds the embedded audiovisual demo sets as real mp4 files, trains late, "
                                   "vanilla-mid and bottleneck-mid fusion, prints A / V / A+V accuracy, GFLOPs and "
                                   "clips/s, and writes plots to DIR. About 10 minutes on 2 CPU cores "
                                   "(--quick: about 2).")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--quick", action="store_true", help="smaller sets and fewer epochs (~2 minutes)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from mbt.recipes.demo import format_table, run_demo

    started = time.time()
    rows = run_demo(args.out, quick=args.quick, progress=not args.no_progress)
    print()
    print(format_table(rows))
    print(f"\nA / V / A+V: test accuracy with audio only, video only, both; GFLOPs per clip; clips/s while "
          f"training.\nPlots and runs in {args.out}/ (curves_*.png, accuracy_vs_gflops_*.png); "
          f"total {time.time() - started:.0f} s.")
    return 0
