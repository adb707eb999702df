"""`mbt flops CONFIG|RUN_DIR [--set ...] [--json]`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flops", help="GFLOPs (multiply-add = 1) and parameters, per modality and total",
                       description="Counts multiply-adds of one clip (batch 1, evaluation) and parameters.")
    p.add_argument("config", help="YAML config path, preset name (mbt-tiny, mbt-small, mbt-base, mbt-large) or a "
                                  "run directory (its config.json: the model as trained or converted)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.fusion_layer=8 (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def _model_config(args: argparse.Namespace):
    from pathlib import Path

    from mbt.config import load_config

    run_dir = Path(args.config)
    if not run_dir.is_dir():
        return load_config(args.config, args.overrides).model
    import json

    from mbt.model.config import MBTConfig
    from mbt.model.mbt import CONFIG_NAME

    if args.overrides:
        raise ValueError(f"--set: {run_dir} is a trained model whose config.json fixes its shape; give a YAML "
                         "config to try other settings")
    path = run_dir / CONFIG_NAME
    try:
        return MBTConfig.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; a run directory (mbt train / mbt convert) holds it") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None


def run(args: argparse.Namespace) -> int:
    from mbt.analysis.flops import count_flops
    from mbt.fileio import dumps
    from mbt.model.fusion import describe_fusion

    cfg = _model_config(args)
    report = count_flops(cfg)
    if args.json:
        print(dumps(report.to_dict()))
        return 0
    print(f"{args.config}: {describe_fusion(cfg)}")
    print(f"{'':12s}{'GFLOPs':>10s}{'params':>14s}")
    for m, g in report.per_modality.items():
        print(f"{m:12s}{g:10.1f}{report.params_per_modality.get(m, 0):14,d}")
    print(f"{'total':12s}{report.gflops:10.1f}{report.params:14,d}")
    for m, g in report.unimodal.items():
        print(f"{m + ' alone':12s}{g:10.1f}")
    return 0
