"""`mbt sweep CONFIG --over key=v1,v2 [--over ...] [--set ...] --out DIR [--metric top1|mAP] [--modalities ...]`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="train and evaluate a grid of config values; CSV + plots",
                       description="Trains and evaluates every point of the cartesian product of the --over lists, "
                                   "one after the other, on data.test (else data.val). Writes DIR/results.csv (the "
                                   "swept values, metrics, GFLOPs, parameters, training seconds) and plots of the "
                                   "metric and GFLOPs against each swept key. Run it again to resume: finished "
                                   "points are skipped, a half-trained one continues from its checkpoint.")
    p.add_argument("config", help="YAML config path, packaged config name (e.g. demo) or preset name")
    p.add_argument("--over", action="append", required=True, metavar="KEY=V1,V2,...",
                   help="a swept key and its values, e.g. --over model.fusion_layer=0,2,4 (repeatable: the grid "
                        "is the cartesian product)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key for every point (repeatable)")
    p.add_argument("--out", required=True, help="output folder: results.csv, plots")
    p.add_argument("--runs-dir", default=None, help="where the points' run directories go (default: OUT/runs)")
    p.add_argument("--metric", choices=("top1", "mAP"), default=None,
                   help="the plotted metric (default: mAP for multi-label sets, else top1)")
    p.add_argument("--modalities", action="append", default=None, metavar="M1,M2",
                   help="streams to evaluate with, e.g. audio,video (repeatable: one set of metric columns per "
                        "set, the first one plotted; default: all the model's streams)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mbt.recipes.sweep import parse_over, run_sweep

    modality_sets = None
    if args.modalities:
        modality_sets = [tuple(m.strip() for m in text.split(",") if m.strip()) for text in args.modalities]
        if not all(modality_sets):
            raise ValueError(f"--modalities {args.modalities}: expected comma-separated stream names")
    rows = run_sweep(args.config, [parse_over(text) for text in args.over], args.out, overrides=args.overrides,
                     metric=args.metric, modality_sets=modality_sets, runs_dir=args.runs_dir,
                     progress=not args.no_progress)
    metric = args.metric or ("mAP" if "mAP" in rows[0] else "top1")
    for row in rows:
        print(f"{row['point']:40s} {metric}={float(row[metric]):.4f} GFLOPs={float(row['gflops']):.4g}")
    print(f"results: {args.out}/results.csv")
    return 0
