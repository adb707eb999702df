"""`mbt data check`: decode every manifest row with the training window and report what would go wrong.

Problems are rows a model cannot use: the media kinds of `MEDIA_ERROR_KINDS` (missing, unreadable, corrupt, not
media, empty, lacking a modality the config needs, NaN samples, a window mostly padding) and label problems against
the classes file (LABEL_PROBLEMS); they are what training would skip or refuse. Warnings are usable rows worth a
look (WARNING_KINDS): cut off or damaged but partly decodable, shorter than the window (padded), silent audio, still
frames, a variable frame rate, a very large resolution.

Each row is checked on its own: whatever one file does (a FIFO, a symbolic-link loop, a decoder error) is that
row's problem, and the check goes on.
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import av
import numpy as np

from mbt.config import Config, build_config
from mbt.data.manifest import ManifestRow, read_classes, read_manifest
from mbt.data.parallel import map_with_progress
from mbt.data.window import fit_window, probe_durations
from mbt.media.decode import (
    AUDIO_GAP_S,
    PAD_TOLERANCE_S,
    MediaError,
    decode_clip,
    media_origin,
    open_media,
    probe,
    video_stream,
)
from mbt.media.preprocess import SILENCE_PEAK
from mbt.media.settings import PreprocessorConfig

SILENCE_RMS_DB = -60.0  # an audio window quieter than this (RMS, dBFS) is silent too
STILL_LEVELS = 8  # a window whose pixels all stay within this many levels of its first frame is still
LARGE_PIXELS = 1920 * 1080  # frames above full HD decode slowly; transcoding shrinks them
VFR_RATIO = 1.5  # a frame interval this much longer or shorter than the median one is irregular...
VFR_SHARE = 0.1  # ... and a file with more than this share of irregular intervals has a variable frame rate
VFR_PACKETS = 300  # packets read to judge the frame rate
TRUNCATED_S = 0.2  # a stream ending this much before its declared duration is cut off

WARNING_KINDS = {
    "truncated": "decodes less than its container declares (cut off); windows reaching past it are padded",
    "corrupt": "some packets cannot be decoded; the holes they leave are padded",
    "short": "shorter than a window (or one stream shorter than the file): part of the window is padding",
    "silent": "the audio window is silent",
    "still": "the video window does not change",
    "vfr": "a variable frame rate (frames are picked by timestamp)",
    "large": "frames above full HD decode slowly",
}
LABEL_PROBLEMS = {
    "no_label": "a row without a label",
    "unknown_label": "a label that is not in the classes file",
    "many_labels": "several labels in a single-label config",
    "label_count": "not one label per class split",
    "no_rows": "a manifest with a header and no rows",
}


# ==================================================================== one file
@dataclass
class Finding:
    """What checking one row found: `problem` (kind, reason) when unusable, else warnings [(kind, reason)]."""

    path: str
    line: int
    problem: tuple[str, str] | None = None
    warnings: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class SpanScan:
    """What the streams hold over a row's span, read once to the end of it (video demuxed, audio decoded).

    Times are media seconds (from the origin). `*_declared`: the stream's duration in the container's header;
    `*_end`: where its last packet (video) or decoded sample (audio) ends.
    """

    declared: float
    video_declared: float | None = None
    video_end: float | None = None
    audio_declared: float | None = None
    audio_end: float | None = None
    audio_lost: float = 0.0  # seconds of audio in holes left by packets that did not decode
    bad_packets: int = 0  # audio packets that failed to decode
    non_finite: int = 0  # NaN / Inf audio samples
    intervals: list[float] = field(default_factory=list)  # first video frame intervals, for the frame rate


def _stream_seconds(stream: av.stream.Stream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return None


def scan_span(path: str | Path, start: float | None, end: float | None) -> SpanScan:
    """Read the streams over [start, end] (default: all): how far they really go, holes, NaN samples."""
    with open_media(path) as container:
        origin = media_origin(container)
        declared = container.duration / av.time_base if container.duration else 0.0
        video = video_stream(container)
        audio = container.streams.audio[0] if container.streams.audio else None
        scan = SpanScan(declared=declared,
                        video_declared=_stream_seconds(video) if video is not None else None,
                        audio_declared=_stream_seconds(audio) if audio is not None else None)
        streams = [s for s in (video, audio) if s is not None]
        if start:
            # a second early: the keyframe before the span, and the packet that ends where the span starts
            container.seek(int((origin + max(start - 1.0, 0.0)) * av.time_base), backward=True)
        stop = origin + end if end is not None else math.inf
        times: list[float] = []
        expected = None
        failed = 0
        try:
            for packet in container.demux(*streams):
                if packet.pts is None or packet.time_base is None:
                    continue
                t = float(packet.pts * packet.time_base)
                if t > stop:
                    break
                if packet.stream is video:
                    scan.video_end = max(scan.video_end or 0.0,
                                         t + float((packet.duration or 0) * packet.time_base) - origin)
                    if len(times) < VFR_PACKETS:
                        times.append(t)
                    continue
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    failed += 1  # counted once a later packet decodes: the last one of a cut-off file is no damage
                    continue
                scan.bad_packets += failed
                failed = 0
                for frame in frames:
                    ft = frame.time if frame.time is not None else expected or 0.0
                    if expected is not None and ft > expected + AUDIO_GAP_S:
                        scan.audio_lost += ft - expected
                    expected = ft + frame.samples / frame.sample_rate
                    scan.audio_end = max(scan.audio_end or 0.0, expected - origin)
                    if frame.format.name.startswith(("flt", "dbl")):  # integer PCM cannot hold a NaN
                        scan.non_finite += int((~np.isfinite(frame.to_ndarray())).sum())
        except av.FFmpegError:
            pass  # the demuxer gave up at a cut-off or damaged tail: the stream ends measure what was there
    times.sort()  # packets come in decoding order; B-frames make that differ from display order
    scan.intervals = [b - a for a, b in zip(times, times[1:]) if b > a]
    return scan


def _db(value: float) -> str:
    return f"{20 * math.log10(value):.0f} dBFS" if value > 0 else "-inf dBFS"


def _cut_off(scan: SpanScan, span_end: float, needs: dict[str, bool]) -> str | None:
    """A sentence when a stream the config needs ends well before it should, else None."""
    notes = []
    for name, declared, reached in (("video", scan.video_declared, scan.video_end),
                                    ("audio", scan.audio_declared, scan.audio_end)):
        if not needs[name] or reached is None:
            continue
        should = min(declared if declared is not None else scan.declared, span_end)
        if reached < should - TRUNCATED_S:
            notes.append(f"its {name} decodes to {reached:.2f} s of the {should:.2f} s its container declares")
    return "; ".join(notes) or None


def inspect_row(window: PreprocessorConfig, max_pad_fraction: float,
                task: tuple[str, float | None, float | None, int]) -> Finding:
    """Decode one row's clip (position 0.5, as evaluation does) and judge it."""
    path, start, end, line = task
    finding = Finding(path, line)
    needs = {"video": "video" in window.modalities, "audio": "audio" in window.modalities}
    scan = None
    try:
        info = probe(path)
        scan = scan_span(path, start, end)
        clip = decode_clip(path, num_frames=window.num_frames, fps=window.fps, frame_stride=window.frame_stride,
                           audio_seconds=window.audio_seconds, sample_rate=window.sample_rate, start=start, end=end,
                           video=needs["video"], audio=needs["audio"], max_short_side=window.short_side)
    except MediaError as e:
        reason = e.reason
        if e.kind in ("no_video", "no_audio"):
            reason += f" (the config's modalities need {', '.join(window.modalities)})"
        cut = _cut_off(scan, end if end is not None else math.inf, needs) if scan is not None else None
        if cut:
            reason += f"; the file is cut off: {cut}"
        finding.problem = (e.kind, reason)
        return finding
    except Exception as e:  # a checker reports every file, whatever went wrong with it
        finding.problem = ("corrupt", f"checking failed: {type(e).__name__}: {e}")
        return finding
    if needs["audio"] and scan.non_finite:
        # decoding refuses them in the checked window; anywhere in the span they make the file unfit to train on
        finding.problem = ("non_finite", f"the audio holds {scan.non_finite} NaN or infinite samples; training "
                                         "windows over them would be skipped")
        return finding
    warn = finding.warnings.append

    span_end = min(end, info.duration) if end is not None else info.duration
    span = span_end - (start or 0.0)
    cut = _cut_off(scan, span_end, needs)
    if cut:
        warn(("truncated", f"cut off: {cut}"))
    if scan.bad_packets or scan.audio_lost > PAD_TOLERANCE_S:
        warn(("corrupt", f"damaged: {scan.bad_packets} packet(s) could not be decoded"
                         + (f", {scan.audio_lost:.2f} s of audio lost" if scan.audio_lost > 0 else "")))

    # How much of each window is padding, and why: a clip shorter than the window, a stream shorter than the
    # file, or the cut-off / damage found above (then that warning says what it costs).
    windows = {"video": window.num_frames * window.frame_stride / window.fps, "audio": window.audio_seconds}
    fractions = {"video": clip.video_pad_fraction if clip.video_padded else 0.0,
                 "audio": clip.audio_pad_fraction if clip.audio_padded else 0.0}
    reached = {"video": scan.video_end, "audio": scan.audio_end}
    explained = next((i for i, (kind, _) in enumerate(finding.warnings) if kind in ("truncated", "corrupt")), None)
    padding = []  # (fraction, kind, reason)
    for m, fraction in fractions.items():
        if fraction <= 0:
            continue
        share = f"{fraction:.0%} of the {windows[m]:.2f} s {m} window is padding"
        if span < windows[m] - PAD_TOLERANCE_S:
            padding.append((fraction, "short", f"the clip lasts {span:.2f} s, shorter than the {windows[m]:.2f} s "
                                               f"{m} window: {fraction:.0%} of it is padding"))
        elif explained is not None:
            padding.append((fraction, None, share))
        elif reached[m] is not None and reached[m] < span_end - PAD_TOLERANCE_S:
            padding.append((fraction, "short", f"the {m} stream ends at {reached[m]:.2f} s, before the clip's "
                                               f"{span_end:.2f} s: {share}"))
        else:
            padding.append((fraction, "corrupt", f"the {m} window has holes (damaged packets): {share}"))
    worst = max(padding, key=lambda p: p[0], default=None)
    if worst is not None and worst[0] > max_pad_fraction:
        reason = worst[2] if worst[1] is not None else f"{finding.warnings[explained][1]}; {worst[2]}"
        finding.problem = ("too_much_padding", f"{reason} (data.max_pad_fraction {max_pad_fraction:g}: training "
                                               "skips such windows)")
        finding.warnings = []
        return finding
    for _, kind, reason in padding:
        if kind is None:
            old_kind, text = finding.warnings[explained]
            finding.warnings[explained] = (old_kind, f"{text}; {reason}")
        else:
            warn((kind, reason))

    if clip.audio is not None:
        peak = clip.audio.abs().max().item()
        rms = clip.audio.double().pow(2).mean().sqrt().item()
        if peak < SILENCE_PEAK or rms < 10 ** (SILENCE_RMS_DB / 20):
            warn(("silent", f"silent audio: peak {_db(peak)}, RMS {_db(rms)}"))
    if clip.video is not None:
        change = (clip.video.int() - clip.video[:1].int()).abs().max().item()
        if change <= STILL_LEVELS:
            warn(("still", f"still frames: no pixel changes by more than {STILL_LEVELS} levels across the "
                           f"window's {clip.video.shape[0]} frames"))
        if info.width and info.height and info.width * info.height > LARGE_PIXELS:
            warn(("large", f"{info.width}x{info.height} frames decode slowly; `mbt data transcode` scales them "
                           f"down"))
        intervals = np.asarray(scan.intervals)
        if len(intervals) >= 2:
            # Judged on the share of irregular intervals: AVI demuxers report one 2-frame gap at the start of
            # every file, which is no variable frame rate.
            median = float(np.median(intervals))
            irregular = int(np.sum((intervals > VFR_RATIO * median) | (intervals < median / VFR_RATIO)))
            if irregular > VFR_SHARE * len(intervals):
                warn(("vfr", f"variable frame rate: {irregular} of {len(intervals)} frame intervals differ from "
                             f"the usual {median * 1000:.0f} ms by more than {VFR_RATIO:g}x (from "
                             f"{intervals.min() * 1000:.0f} to {intervals.max() * 1000:.0f} ms; frames are picked "
                             "by timestamp; `mbt data transcode --fps F` makes the rate constant)"))
    return finding


# ==================================================================== labels
@dataclass
class LabelRules:
    """What a row's labels must satisfy: names from `source`; `multi_label` None leaves the count unchecked."""

    names: list[str]
    source: str
    multi_label: bool | None = None
    class_splits: tuple[int, ...] | None = None


def _suggestion(label: str, names: list[str], folded: dict[str, str]) -> str:
    if label.casefold() in folded:
        return f"; did you mean {folded[label.casefold()]!r}? (labels are case-sensitive)"
    close = difflib.get_close_matches(label, names, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def label_problems(row: ManifestRow, rules: LabelRules) -> list[tuple[str, str]]:
    """(kind, reason) of each thing wrong with a row's labels (the report names the manifest line)."""
    if not row.labels:
        return [("no_label", "the row has no label")]
    names = rules.names
    found = []
    if rules.class_splits is not None:
        if len(row.labels) != len(rules.class_splits):
            found.append(("label_count", f"{len(row.labels)} label(s) {list(row.labels)}, but the "
                                         f"{len(rules.class_splits)} class splits need one each, separated by ';'"))
    elif rules.multi_label is False and len(row.labels) > 1:
        found.append(("many_labels", f"{len(row.labels)} labels {list(row.labels)} in a single-label config "
                                     "(model.multi_label is false)"))
    known = set(names)
    folded = {n.casefold(): n for n in names}
    for label in row.labels:
        if label not in known:
            found.append(("unknown_label", f"label {label!r} is not in {rules.source}"
                                           + _suggestion(label, names, folded)))
    return found


# ==================================================================== a manifest
@dataclass
class CheckReport:
    rows: int
    problems: list[dict[str, Any]] = field(default_factory=list)  # {"path", "kind", "reason", "line"}
    warnings: list[dict[str, Any]] = field(default_factory=list)
    manifest: str = ""
    notes: list[str] = field(default_factory=list)  # what was not checked, and why
    window: dict[str, Any] | None = None  # how the config's input windows fit the clips (mbt.data.window)

    @property
    def ok(self) -> int:
        """Usable rows (rows with warnings included)."""
        return self.rows - len({p["line"] for p in self.problems if p["kind"] != "no_rows"})

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "rows": self.rows, "problems": self.problems, "warnings": self.warnings,
                "counts": {"problems": dict(Counter(p["kind"] for p in self.problems)),
                           "warnings": dict(Counter(w["kind"] for w in self.warnings))},
                "manifest": self.manifest, "notes": self.notes, "window": self.window}

    def summary(self, limit: int = 20) -> str:
        lines = [f"{self.rows} rows: {self.ok} usable, {len({p['line'] for p in self.problems})} with problems, "
                 f"{len({w['line'] for w in self.warnings})} with warnings"]
        lines += [f"note: {note}" for note in self.notes]
        name = Path(self.manifest).name
        for title, entries in (("problems", self.problems), ("warnings", self.warnings)):
            if not entries:
                continue
            counts = Counter(e["kind"] for e in entries)
            lines.append(f"{title}: " + ", ".join(f"{kind} {n}" for kind, n in counts.most_common()))
            lines += [f"  {name}:{e['line']}: {e['path']}: {e['kind']}: {e['reason']}" for e in entries[:limit]]
            if len(entries) > limit:
                lines.append(f"  ... {len(entries) - limit} more (--json FILE lists them all)")
        return "\n".join(lines)


def check_manifest(manifest: str | Path, cfg: Config | None = None, *, classes: str | Path | None = None,
                   check_label_count: bool = False, jobs: int = 1, progress: bool = True) -> CheckReport:
    """Decode every row of `manifest` with the window of `cfg` (default: the mbt-tiny preset's) and, with
    `classes` (a classes file), check the labels against it; `check_label_count` also checks the number of labels
    a row has against cfg's model.multi_label / class_splits."""
    cfg = cfg or build_config()
    window = cfg.preprocessor(stats=(0.0, 1.0))  # the windows, not the statistics
    rows = read_manifest(manifest)
    report = CheckReport(len(rows), manifest=str(manifest))
    if not rows:
        report.problems.append({"path": str(manifest), "kind": "no_rows", "line": 1,
                                "reason": "the manifest has a header but no rows"})
        return report
    if classes is not None:
        rules = LabelRules(read_classes(classes), Path(classes).name,
                           multi_label=cfg.model.multi_label if check_label_count else None,
                           class_splits=cfg.model.class_splits if check_label_count else None)
        for row in rows:
            for kind, reason in label_problems(row, rules):
                report.problems.append({"path": str(row.path), "kind": kind, "reason": reason, "line": row.line})
    else:
        report.notes.append("labels not checked (give --classes FILE, or --config naming data.classes)")
    tasks = [(str(row.path), row.start, row.end, row.line) for row in rows]
    inspect = partial(inspect_row, window, cfg.data.max_pad_fraction)
    for finding in map_with_progress(inspect, tasks, jobs=jobs, desc="check", progress=progress):
        if finding.problem:
            kind, reason = finding.problem
            report.problems.append({"path": finding.path, "kind": kind, "reason": reason, "line": finding.line})
        for kind, reason in finding.warnings:
            report.warnings.append({"path": finding.path, "kind": kind, "reason": reason, "line": finding.line})
    report.problems.sort(key=lambda p: p["line"])
    fit = fit_window(window, probe_durations(rows), cfg.model.spec_patch[0])
    if fit is not None:
        report.window = fit.to_json()
        if fit.needs_note:
            report.notes.append(f"input windows: {fit.describe()}")
    return report
