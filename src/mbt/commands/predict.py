"""`mbt predict CHECKPOINT VIDEO... | --manifest CSV | --folder DIR | VIDEO --timeline`."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="labels with scores for files, a manifest, a folder, or over time in a long video",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Labels with scores from N evenly spaced clips x M crops per file, logits averaged as in\n"
                    "`mbt evaluate`. A file without an audio (or video) track is predicted from the other\n"
                    "stream and says so.\n\n"
                    "  mbt predict RUN a.mp4 b.mp4 [--top-k K] [--json]\n"
                    "  mbt predict RUN --manifest CSV | --folder DIR --out preds.jsonl   (resumable)\n"
                    "  mbt predict RUN long.mp4 --timeline [--window S --hop S] --out timeline.json "
                    "--plot timeline.png")
    p.add_argument("checkpoint", help="a from_pretrained directory (output of mbt train / mbt convert)")
    p.add_argument("videos", nargs="*", metavar="VIDEO", help="media files")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--manifest", metavar="CSV", help="predict every row of a manifest (path[,labels,start,end])")
    source.add_argument("--folder", metavar="DIR", help="predict every media file under DIR (recursively)")
    p.add_argument("--out", metavar="FILE", help="--manifest / --folder: the JSON-lines file (one line per clip; "
                                                 "clips already in it are not predicted again); --timeline: JSON")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="labels per file (default 5)")
    p.add_argument("--json", action="store_true", help="VIDEO list: print JSON (a list, one object per file)")
    p.add_argument("--clips", type=int, default=4, metavar="N", help="evenly spaced clips per file (default 4)")
    p.add_argument("--crops", type=int, default=1, choices=(1, 3), help="1 = centre, 3 = left/centre/right")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="files (or windows) per forward pass (default 8)")
    p.add_argument("--num-workers", type=int, default=2, metavar="N", help="decoding processes (default 2)")
    p.add_argument("--retry-skipped", action="store_true",
                   help="--manifest / --folder: predict again the clips the output lists as skipped")
    p.add_argument("--timeline", action="store_true", help="scores over time of one long VIDEO")
    p.add_argument("--window", type=float, default=None, metavar="S",
                   help="--timeline: window length in seconds (default: the model's input window)")
    p.add_argument("--hop", type=float, default=None, metavar="S", help="--timeline: seconds between windows (default: window/2)")
    p.add_argument("--plot", metavar="PNG", help="--timeline: draw the top classes over the spectrogram")
    p.add_argument("--no-fusion", action="store_true",
                   help="run every layer with the streams apart (the official test_with_bottlenecks=False)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run, trailing_positionals="videos")


def _check_usage(args: argparse.Namespace) -> None:
    """Every usage mistake, before the model is loaded (ValueError: exit 2, one line)."""
    for name, value, low in (("--top-k", args.top_k, 1), ("--clips", args.clips, 1),
                             ("--batch-size", args.batch_size, 1), ("--num-workers", args.num_workers, 0)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    batch = args.manifest is not None or args.folder is not None
    if batch and args.videos:
        raise ValueError("give VIDEO files or --manifest / --folder, not both")
    if not batch and not args.videos:
        raise ValueError("nothing to predict: give VIDEO files, --manifest CSV or --folder DIR")
    if batch and not args.out:
        raise ValueError("--manifest / --folder write one JSON line per clip: give --out FILE.jsonl")
    if args.timeline:
        if batch or len(args.videos) != 1:
            raise ValueError("--timeline takes exactly one VIDEO")
        for name, value in (("--window", args.window), ("--hop", args.hop)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value:g}")
    else:
        for name, value in (("--window", args.window), ("--hop", args.hop), ("--plot", args.plot)):
            if value is not None:
                raise ValueError(f"{name} goes with --timeline")
        if args.out and not batch:
            raise ValueError("--out goes with --manifest, --folder or --timeline (VIDEO lists print to stdout)")
    if args.json and (batch or args.timeline):
        raise ValueError("--json is for VIDEO lists; --manifest / --folder / --timeline write JSON to --out")


def run(args: argparse.Namespace) -> int:
    _check_usage(args)
    from mbt.engine.evaluate import load_for_inference

    model, preprocessor = load_for_inference(args.checkpoint, args.device)
    if args.timeline:
        return _run_timeline(args, model, preprocessor)
    if args.manifest is not None or args.folder is not None:
        return _run_batch(args, model, preprocessor)
    return _run_files(args, model, preprocessor)


def _run_files(args: argparse.Namespace, model, preprocessor) -> int:
    from mbt.engine.predict import predict_files
    from mbt.fileio import dumps

    predictions = list(predict_files(model, preprocessor, args.videos, top_k=args.top_k, num_clips=args.clips,
                                     num_crops=args.crops, batch_size=args.batch_size,
                                     num_workers=min(args.num_workers, len(args.videos) - 1),
                                     progress=not args.no_progress and len(args.videos) > 1,
                                     fuse=not args.no_fusion))
    if args.json:
        print(dumps([p.to_dict() for p in predictions], indent=1))
    else:
        for p in predictions:  # each warning once, under its file
            print(p.path)
            if p.skipped:
                print(f"  skipped: {p.skipped}")
            for w in p.warnings:
                print(f"  warning: {w}")
            for entry in p.labels:
                split = f"[{entry['split']}] " if "split" in entry else ""
                print(f"  {entry['score']:.4f}  {split}{entry['label']}")
            if len(p.modality_labels) > 1:
                print("  per stream: " + " | ".join(f"{m}: {labels[0]['label']} {labels[0]['score']:.4f}"
                                                    for m, labels in p.modality_labels.items()))
    return 0 if all(p.skipped is None for p in predictions) else 1


def _run_batch(args: argparse.Namespace, model, preprocessor) -> int:
    from mbt.engine.batch_predict import folder_clips, manifest_clips, predict_to_jsonl

    clips = manifest_clips(args.manifest) if args.manifest is not None else folder_clips(args.folder)
    try:
        report = predict_to_jsonl(model, preprocessor, clips, args.out, top_k=args.top_k, num_clips=args.clips,
                                  num_crops=args.crops, batch_size=args.batch_size, num_workers=args.num_workers,
                                  retry_skipped=args.retry_skipped, progress=not args.no_progress,
                                  fuse=not args.no_fusion)
    except OSError as e:
        if isinstance(e, FileNotFoundError) and e.filename != args.out:
            raise
        print(f"mbt predict: error: {args.out}: cannot write: {e.strerror or e}", file=sys.stderr)
        return 3
    print(report.summary(), file=sys.stderr)
    return 0 if not report.skipped else 1


def _run_timeline(args: argparse.Namespace, model, preprocessor) -> int:
    from mbt.engine.predict import predict_timeline

    (video,) = args.videos
    timeline = predict_timeline(model, preprocessor, video, window=args.window, hop=args.hop,
                                batch_size=args.batch_size, num_workers=args.num_workers,
                                progress=not args.no_progress, fuse=not args.no_fusion)
    for w in timeline.warnings:
        print(f"mbt predict: warning: {video}: {w}", file=sys.stderr)
    written = []
    try:
        if args.out:
            from pathlib import Path

            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(timeline.to_dict(), allow_nan=False) + "\n")
            written.append(args.out)
        if args.plot:
            from mbt.analysis.timeline import plot_timeline

            written.append(str(plot_timeline(timeline, args.plot, preprocessor=preprocessor, top=args.top_k)))
    except OSError as e:
        print(f"mbt predict: error: {e.filename or args.out}: cannot write: {e.strerror or e}", file=sys.stderr)
        return 3
    top = timeline.top_classes(min(args.top_k, 3))
    if not args.out:  # the scores themselves go to stdout: start, end and the best classes of each window
        names = [timeline.class_names[c] for c in top]
        print(f"{'start':>8s} {'end':>8s}  " + "  ".join(f"{n[:14]:>14s}" for n in names))
        for i in range(len(timeline.starts)):
            print(f"{timeline.starts[i]:8.2f} {timeline.ends[i]:8.2f}  "
                  + "  ".join(f"{timeline.scores[i, c]:14.4f}" for c in top))
    print(f"{len(timeline.starts)} windows of {timeline.window:g} s every {timeline.hop:g} s over "
          f"{timeline.duration:.1f} s" + (f" ({len(timeline.skipped)} could not be decoded)" if timeline.skipped
                                           else "") + (f": {', '.join(written)}" if written else ""),
          file=sys.stderr)
    return 0 if len(timeline.starts) else 1
