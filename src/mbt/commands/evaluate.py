"""`mbt evaluate CHECKPOINT --manifest CSV [--clips N] [--crops N] [--modalities audio,video] [--no-fusion]
[--on-missing-modality skip|mask|error] [--json FILE]`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a manifest",
                       description="Evaluates N evenly spaced clips x M crops per video, logits averaged per video "
                                   "(official test: 4 clips, centre crop). Works under torchrun too.")
    p.add_argument("checkpoint", help="a from_pretrained directory (output of mbt train / mbt convert)")
    p.add_argument("--manifest", required=True,
                   help="CSV manifest (path,labels[,start,end]), or shards of `mbt data shard` (their folder, a "
                        "shard-list file, a brace pattern, a URL or pipe: command)")
    p.add_argument("--clips", type=int, default=4, help="evenly spaced clips per video (default 4)")
    p.add_argument("--crops", type=int, default=1, choices=(1, 3), help="1 = centre, 3 = left/centre/right")
    p.add_argument("--modalities", default=None,
                   help="comma-separated streams to use, e.g. audio, video or audio,video (default: all)")
    p.add_argument("--no-fusion", action="store_true",
                   help="run every layer with the streams apart (the official test_with_bottlenecks=False)")
    p.add_argument("--on-missing-modality", choices=("skip", "mask", "error"), default="skip",
                   help="a clip lacking a stream: skip it (default), evaluate it with the streams it has (mask), "
                        "or stop (error)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--json", dest="json_file", default=None, help="write the metrics as JSON to this file")
    p.add_argument("--per-class-ap", default=None, help="write per-class AP to this CSV (multi-label)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name, value, low in (("--batch-size", args.batch_size, 1), ("--clips", args.clips, 1),
                             ("--num-workers", args.num_workers, 0)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    from mbt.engine.evaluate import evaluate_checkpoint
    from mbt.errors import DataError
    from mbt.fileio import check_writable_file, dumps, write_json

    for path, what in ((args.json_file, "metrics JSON"), (args.per_class_ap, "per-class AP CSV")):
        if path:
            check_writable_file(path, what=what)  # before the work, not after it
    modalities = tuple(m.strip() for m in args.modalities.split(",") if m.strip()) if args.modalities else None
    result = evaluate_checkpoint(args.checkpoint, args.manifest, num_clips=args.clips, num_crops=args.crops,
                                 modalities=modalities, batch_size=args.batch_size, num_workers=args.num_workers,
                                 per_class_csv=args.per_class_ap, progress=not args.no_progress,
                                 fuse=not args.no_fusion, on_missing_modality=args.on_missing_modality)
    if not result.metrics:  # not the main process under torchrun
        return 0
    if args.json_file:
        write_json(args.json_file, result.metrics, what="metrics JSON")
    print(dumps(result.metrics, indent=1))
    if not result.metrics.get("num_clips"):
        reasons = ", ".join(sorted({kind for _, kind, _ in result.skipped})) or "empty manifest"
        raise DataError(f"{args.manifest}: no clip could be evaluated ({result.metrics.get('num_skipped', 0)} "
                        f"skipped: {reasons}); `mbt data check` lists each file's problem")
    return 0
