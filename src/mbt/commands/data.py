"""`mbt data check|transcode|shard|prepare|stats`: look after the media and manifests a model is trained on."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _default_jobs() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _config(args: argparse.Namespace):
    from mbt.config import build_config, load_config

    if args.config:
        return load_config(args.config, args.set)
    return build_config(overrides=args.set)


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file or preset whose data window is used (default: mbt-tiny)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set model.modalities=[audio] (repeatable)")


def _write_json(path: str, payload: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    from mbt.fileio import write_json

    write_json(path, payload, what="JSON report")


# ==================================================================== check
def run_check(args: argparse.Namespace) -> int:
    from mbt.data.manifest import ManifestError

    try:
        return _check(args)
    except ManifestError as e:  # a manifest or classes file that cannot be read is a data problem too
        print(f"mbt data check: {e}", file=sys.stderr)
        return 1


def _check(args: argparse.Namespace) -> int:
    from mbt.data.check import check_manifest

    cfg = _config(args)
    classes, note = args.classes, None
    if classes is None and args.config and cfg.data.classes:
        classes = cfg.data.classes
        if not Path(classes).is_file():  # a packaged recipe names the usual place; the window is still useful
            classes, note = None, f"labels not checked: the config's classes file {cfg.data.classes} does not exist"
    # How many labels a row may have is the config's to say; the preset's default (single-label) would flag every
    # row of a multi-label manifest checked with --classes alone.
    count = bool(args.config) or any(key in o for o in args.set for key in ("multi_label", "class_splits"))
    report = check_manifest(args.manifest, cfg, classes=classes, check_label_count=count, jobs=args.jobs)
    if note:
        report.notes = [note]
    print(report.summary())
    if args.json:
        _write_json(args.json, report.to_json())  # an OutputError: exit 3 (mbt.cli)
    return 0 if not report.problems else 1


# ==================================================================== transcode
def run_transcode(args: argparse.Namespace) -> int:
    from mbt.data.transcode import transcode_manifest

    # an output folder, manifest or report that cannot be written is an OSError: exit 3 (mbt.cli)
    report = transcode_manifest(args.manifest, args.out, short_side=args.short_side, gop=args.gop,
                                fps=args.fps or None, jobs=args.jobs)
    print(report.summary())
    return 3 if report.output_failed else 1 if report.failed else 0


# ==================================================================== shard
def run_shard(args: argparse.Namespace) -> int:
    from mbt.data.shards import parse_size, write_shards

    transcode = ({"short_side": args.short_side, "gop": args.gop, "fps": args.fps} if args.transcode else None)
    if transcode and (args.short_side < 2 or args.gop < 1 or (args.fps is not None and args.fps <= 0)):
        raise ValueError(f"need --short-side >= 2, --gop >= 1 and --fps > 0; got {args.short_side}, {args.gop}, "
                         f"{args.fps}")
    # a manifest or index problem is exit 2, an unwritable shard exit 3 (mbt.cli)
    report = write_shards(args.manifest, args.out, shard_size=parse_size(args.shard_size), transcode=transcode,
                          order_seed=None if args.keep_order else args.seed, jobs=args.jobs)
    print(report.summary())
    return 1 if report.skipped else 0


# ==================================================================== prepare
def run_prepare(args: argparse.Namespace) -> int:
    from mbt.data import prepare

    common = dict(pattern=args.pattern, keep_missing=args.keep_missing)
    if args.dataset == "audioset":
        result = prepare.prepare_audioset(args.annotations, args.media, args.out, full_videos=args.full_videos,
                                          **common)
    elif args.dataset == "vggsound":
        result = prepare.prepare_vggsound(args.annotations, args.media, args.out, full_videos=args.full_videos,
                                          **common)
    else:
        if args.full_videos:
            raise ValueError("--full-videos: Epic-Kitchens media are always whole videos (start/end are written)")
        result = prepare.prepare_epic_kitchens(args.annotations, args.media, args.out, **common)
    print(result.summary())
    return 0


# ==================================================================== stats
def run_stats(args: argparse.Namespace) -> int:
    from mbt.data.stats import spectrogram_stats

    stats = spectrogram_stats(args.manifest, _config(args), max_clips=args.max_clips, jobs=args.jobs)
    print(stats.summary())
    if args.json:
        _write_json(args.json, stats.to_json())
    return 0 if stats.clips else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="check, transcode, shard, prepare manifests, spectrogram statistics",
                                 description="Tools for the media files and manifests a model is trained on.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    check = sub.add_parser("check", help="decode every row and report unusable or suspicious clips",
                           description="Decodes every manifest row with the config's window and checks its "
                                       "labels against the classes file. Problems (unusable rows: media that "
                                       "cannot be decoded, NaN samples, a window mostly padding, unknown or "
                                       "missing labels, no rows at all) make the exit code 1; warnings (usable "
                                       "but worth a look: cut off, damaged, short, silent, still, variable "
                                       "frame rate) do not.")
    check.add_argument("manifest", help="manifest CSV (path,labels[,start,end])")
    _add_config_options(check)
    check.add_argument("--classes", metavar="FILE",
                       help="classes file the labels must come from (default: the --config's data.classes)")
    check.add_argument("--json", metavar="FILE", help='write {"ok", "problems", "warnings", "rows"} to FILE')
    check.add_argument("--jobs", type=int, default=_default_jobs(), help="decoding processes (default: %(default)s)")
    check.set_defaults(func=run_check)

    transcode = sub.add_parser("transcode", help="re-encode media for fast random access; resumable",
                               description="Re-encodes each file as H.264 (short side scaled, a keyframe every "
                                           "GOP frames) + AAC 16 kHz mono in mp4, and writes the matching "
                                           "manifest in DIR. Files already done are skipped; each file that "
                                           "fails is reported (DIR/transcode_report.json) and the others go on. "
                                           "Exit 1 when some input failed, 3 when outputs could not be written.")
    transcode.add_argument("manifest", help="manifest CSV")
    transcode.add_argument("--out", required=True, metavar="DIR", help="output folder (media + manifest)")
    # Defaults for the paper's sampling (32 frames at stride 2 of 25 fps, short side 256 jittered up to x1.33): the
    # loader then decodes only frames it uses, at no more pixels than its largest scale jitter (issue 19).
    transcode.add_argument("--short-side", type=int, default=340,
                           help="scale the short side down to N px (default 340: 256 x the largest scale jitter "
                                "1.33, so no training crop loses detail; never enlarges)")
    transcode.add_argument("--gop", type=int, default=16, help="frames between keyframes (default 16)")
    transcode.add_argument("--fps", type=float, default=12.5,
                           help="output frame rate (default 12.5: the frames a stride-2 sampling of 25 fps reads, "
                                "data.fps / data.frame_stride; the loader picks frames by timestamp, so the run's "
                                "config stays as it is); 0 keeps the source's rate")
    transcode.add_argument("--jobs", type=int, default=_default_jobs(), help="parallel files (default: %(default)s)")
    transcode.set_defaults(func=run_transcode)

    shard = sub.add_parser("shard", help="write WebDataset tar shards + shards.json for streaming; resumable",
                           description="Writes the manifest's rows as WebDataset tar shards DIR/<name>-NNNNNN.tar "
                                       "(each sample: the media bytes as stored, or re-encoded with --transcode, and "
                                       "its labels and start/end as JSON) in a shuffled order, and the index "
                                       "DIR/shards.json (shard names, sample counts, classes, the manifest's "
                                       "sha256). data.train / val / test and `mbt evaluate --manifest` take DIR. An "
                                       "interrupted run continues where it stopped (finished shards are kept). "
                                       "Rows whose file is missing or unreadable are left out and listed: exit 1.")
    shard.add_argument("manifest", help="manifest CSV")
    shard.add_argument("--out", required=True, metavar="DIR", help="output folder (one manifest per folder)")
    shard.add_argument("--shard-size", default="1GB", metavar="SIZE",
                       help="start a new shard past SIZE (1GB, 500MB, 256MiB; default %(default)s)")
    shard.add_argument("--transcode", action="store_true",
                       help="re-encode each file as `mbt data transcode` does (H.264 + AAC 16 kHz mono) first")
    shard.add_argument("--short-side", type=int, default=256, help="--transcode: short side in px (default 256)")
    shard.add_argument("--gop", type=int, default=16, help="--transcode: frames between keyframes (default 16)")
    shard.add_argument("--fps", type=float, default=None, help="--transcode: frame rate (default: keep)")
    shard.add_argument("--keep-order", action="store_true",
                       help="write the rows in the manifest's order (default: shuffled, so that each shard mixes "
                            "the classes)")
    shard.add_argument("--seed", type=int, default=0, help="seed of the shuffled row order (default 0)")
    shard.add_argument("--jobs", type=int, default=_default_jobs(),
                       help="--transcode: parallel files (default: %(default)s)")
    shard.set_defaults(func=run_shard)

    prep = sub.add_parser("prepare", help="build manifests from official annotation files",
                          description="Builds manifests and a classes file from official annotation files and a "
                                      "local media folder (searched recursively), counting rows with no file.")
    prep.add_argument("dataset", choices=["audioset", "vggsound", "epic-kitchens"])
    prep.add_argument("--annotations", required=True, metavar="PATH",
                      help="folder of the official files (audioset: *_segments.csv + class_labels_indices.csv; "
                           "vggsound: vggsound.csv; epic-kitchens: EPIC_100_{train,validation,verb_classes,"
                           "noun_classes}.csv), or the one CSV file")
    prep.add_argument("--media", required=True, metavar="DIR", help="folder holding the media files")
    prep.add_argument("--out", required=True, metavar="DIR", help="where manifests and classes.txt are written")
    prep.add_argument("--pattern", action="append", default=None, metavar="PATTERN",
                      help="media file name, e.g. '{ytid}_{start}.mp4'; repeat to try several in order (fields: "
                           "ytid, start, end in seconds ({start} 30 or 2.5, {start:.3f} 30.000, {start:06d} "
                           "000030), start_ms, end_ms; epic: participant_id, video_id); other common extensions "
                           "are tried too (default: AudioSet YTID_30.mp4, YTID_30_40.mp4, YTID_30.000_40.000.mp4, "
                           "YTID_2.5_12.5.mp4, YTID_000030_000040.mp4, YTID.mp4, ...)")
    prep.add_argument("--keep-missing", action="store_true",
                      help="keep rows whose file is missing (with the expected path) instead of leaving them out")
    prep.add_argument("--full-videos", action="store_true",
                      help="audioset/vggsound: the files are whole videos; write each segment's start/end")
    prep.set_defaults(func=run_prepare)

    stats = sub.add_parser("stats", help="spectrogram mean/std for data.normalisation: custom",
                           description="Mean and std of the un-normalised audio front end over sampled clips, "
                                       "printed as the config lines to paste.")
    stats.add_argument("manifest", help="manifest CSV")
    _add_config_options(stats)
    stats.add_argument("--max-clips", type=int, default=1000, help="clips sampled (default 1000)")
    stats.add_argument("--json", metavar="FILE", help='write {"spec_mean", "spec_std", "clips", ...} to FILE')
    stats.add_argument("--jobs", type=int, default=_default_jobs(), help="decoding processes (default: %(default)s)")
    stats.set_defaults(func=run_stats)
