"""`mbt predict CHECKPOINT VIDEO... [--top-k K] [--json] [--no-fusion]`."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-k labels with scores for each file",
                       description="Predicts from a centre clip of each file. A file without an audio (or video) "
                                   "track is predicted from the other stream, with a warning.")
    p.add_argument("checkpoint", help="a from_pretrained directory")
    p.add_argument("videos", nargs="+", metavar="VIDEO")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON (a list, one object per file)")
    p.add_argument("--no-fusion", action="store_true",
                   help="run every layer with the streams apart (the official test_with_bottlenecks=False)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mbt.engine.evaluate import load_for_inference
    from mbt.engine.predict import predict_file

    model, preprocessor = load_for_inference(args.checkpoint)
    predictions = [predict_file(model, preprocessor, video, top_k=args.top_k, fuse=not args.no_fusion)
                   for video in args.videos]
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=1))
    else:
        for p in predictions:
            print(p.path)
            if p.error:
                print(f"  error: {p.error}")
            for w in p.warnings:
                print(f"  warning: {w}")
            for entry in p.labels:
                split = f"[{entry['split']}] " if "split" in entry else ""
                print(f"  {entry['score']:.4f}  {split}{entry['label']}")
    return 0 if all(p.error is None for p in predictions) else 1
