"""`mbt flops CONFIG [--set ...] [--json]`."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flops", help="GFLOPs (multiply-add = 1) and parameters, per modality and total",
                       description="Counts multiply-adds of one clip (batch 1, evaluation) and parameters.")
    p.add_argument("config", help="YAML config path or preset name (mbt-tiny, mbt-small, mbt-base, mbt-large)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.fusion_layer=8 (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mbt.analysis.flops import count_flops
    from mbt.config import load_config
    from mbt.model.fusion import describe_fusion

    cfg = load_config(args.config, args.overrides).model
    report = count_flops(cfg)
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    print(f"{args.config}: {describe_fusion(cfg)}")
    print(f"{'':12s}{'GFLOPs':>10s}{'params':>14s}")
    for m, g in report.per_modality.items():
        print(f"{m:12s}{g:10.1f}{report.params_per_modality.get(m, 0):14,d}")
    print(f"{'total':12s}{report.gflops:10.1f}{report.params:14,d}")
    for m, g in report.unimodal.items():
        print(f"{m + ' alone':12s}{g:10.1f}")
    return 0
