"""`mbt train CONFIG [--set key=value ...] [--out DIR] [--resume | --overwrite]` (also under torchrun)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model; DIR ends up a from_pretrained directory",
                       description="Trains CONFIG (YAML path or preset) into DIR. Multi-GPU / multi-process: "
                                   "`torchrun --nproc_per_node N -m mbt.cli train ...` (train.batch_size is global).")
    p.add_argument("config", help="YAML config path, packaged config name (e.g. audioset) or preset name")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--out", default="runs/train", help="output directory (default: runs/train)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue exactly from the newest checkpoint in --out that verifies")
    mode.add_argument("--overwrite", action="store_true",
                      help="start afresh in an --out that holds a run (the old run is moved aside, not deleted)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mbt.config import load_config
    from mbt.recipes.train import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    last = result.history[-1] if result.history else {}
    summary = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k.startswith("val_") and isinstance(v, float))
    print(f"trained {result.steps} steps in {result.seconds:.0f} s ({result.clips_per_second:.1f} clips/s)"
          f"{'; ' + summary if summary else ''}; skipped clips: {result.skipped}; model: {result.out_dir}")
    return 0
