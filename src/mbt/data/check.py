"""`mbt data check`: decode every manifest row with the training window and report what would go wrong.

Problems are rows a model cannot use (missing, unreadable, corrupt or truncated, not media, empty, lacking a
modality the config needs); they are what the datasets would skip. Warnings are usable rows worth a look:
shorter than the window (padded), silent audio, still frames, a variable frame rate, a very large resolution.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import av

from mbt.config import Config, build_config
from mbt.data.manifest import read_manifest
from mbt.data.parallel import map_with_progress
from mbt.media.decode import MediaError, decode_clip, probe
from mbt.media.preprocess import SILENCE_PEAK
from mbt.media.settings import PreprocessorConfig

SILENCE_RMS_DB = -60.0  # an audio window quieter than this (RMS, dBFS) is silent too
STILL_LEVELS = 8  # a window whose pixels all stay within this many levels of its first frame is still
LARGE_PIXELS = 1920 * 1080  # frames above full HD decode slowly; transcoding shrinks them
VFR_RATIO = 1.5  # longest / shortest frame interval above this: variable frame rate
VFR_PACKETS = 300  # packets read (no decoding) to judge the frame rate


# ==================================================================== one file
@dataclass
class Finding:
    """What checking one row found: `problem` (kind, reason) when unusable, else warnings [(kind, reason)]."""

    path: str
    line: int
    problem: tuple[str, str] | None = None
    warnings: list[tuple[str, str]] = field(default_factory=list)


def _db(value: float) -> str:
    return f"{20 * math.log10(value):.0f} dBFS" if value > 0 else "-inf dBFS"


def frame_intervals(path: str | Path, max_packets: int = VFR_PACKETS) -> list[float]:
    """Intervals (seconds) between the first video frames' timestamps, from packets (no decoding)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = []
        try:
            for packet in container.demux(stream):
                if packet.pts is not None:
                    times.append(float(packet.pts * stream.time_base))
                if len(times) >= max_packets:
                    break
        except av.FFmpegError:
            pass  # a truncated tail: the packets read so far still tell
    times.sort()  # packets come in decoding order; B-frames make that differ from display order
    return [b - a for a, b in zip(times, times[1:]) if b > a]


def inspect_row(window: PreprocessorConfig, task: tuple[str, float | None, float | None, int]) -> Finding:
    """Decode one row's clip (position 0.5, as evaluation does) and judge it."""
    path, start, end, line = task
    finding = Finding(path, line)
    needs_video, needs_audio = "video" in window.modalities, "audio" in window.modalities
    try:
        info = probe(path)
        clip = decode_clip(path, num_frames=window.num_frames, fps=window.fps, frame_stride=window.frame_stride,
                           audio_seconds=window.audio_seconds, sample_rate=window.sample_rate, start=start, end=end,
                           video=needs_video, audio=needs_audio, max_short_side=window.short_side)
    except MediaError as e:
        reason = e.reason
        if e.kind in ("no_video", "no_audio"):
            reason += f" (the config's modalities need {', '.join(window.modalities)})"
        finding.problem = (e.kind, reason)
        return finding
    except Exception as e:  # a checker reports every file, whatever the decoder raised
        finding.problem = ("unreadable", f"decoding failed: {type(e).__name__}: {e}")
        return finding
    warn = finding.warnings.append

    span = (min(end, info.duration) if end is not None else info.duration) - (start or 0.0)
    short = []
    if clip.video_padded:
        short.append(f"video window {window.num_frames * window.frame_stride / window.fps:.2f} s")
    if clip.audio_padded:
        short.append(f"audio window {window.audio_seconds:.2f} s")
    if short:
        warn(("short", f"lasts {span:.2f} s, shorter than the {' and '.join(short)}: padded"))
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
        intervals = frame_intervals(path)
        if len(intervals) >= 2 and max(intervals) > VFR_RATIO * min(intervals):
            warn(("vfr", f"variable frame rate: frame intervals from {min(intervals) * 1000:.0f} to "
                         f"{max(intervals) * 1000:.0f} ms (frames are picked by timestamp; `mbt data transcode "
                         f"--fps F` makes the rate constant)"))
    return finding


# ==================================================================== a manifest
@dataclass
class CheckReport:
    rows: int
    problems: list[dict[str, Any]] = field(default_factory=list)  # {"path", "kind", "reason", "line"}
    warnings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> int:
        """Usable rows (rows with warnings included)."""
        return self.rows - len(self.problems)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "rows": self.rows, "problems": self.problems, "warnings": self.warnings}

    def summary(self, limit: int = 20) -> str:
        lines = [f"{self.rows} rows: {self.ok} usable, {len(self.problems)} with problems, "
                 f"{len({w['line'] for w in self.warnings})} with warnings"]
        for title, entries in (("problems", self.problems), ("warnings", self.warnings)):
            if not entries:
                continue
            counts = Counter(e["kind"] for e in entries)
            lines.append(f"{title}: " + ", ".join(f"{kind} {n}" for kind, n in counts.most_common()))
            lines += [f"  {e['path']} (line {e['line']}): {e['kind']}: {e['reason']}" for e in entries[:limit]]
            if len(entries) > limit:
                lines.append(f"  ... {len(entries) - limit} more (--json FILE lists them all)")
        return "\n".join(lines)


def check_manifest(manifest: str | Path, cfg: Config | None = None, *, jobs: int = 1,
                   progress: bool = True) -> CheckReport:
    """Decode every row of `manifest` with the window of `cfg` (default: the mbt-tiny preset's)."""
    window = (cfg or build_config()).preprocessor()
    rows = read_manifest(manifest)
    tasks = [(str(row.path), row.start, row.end, row.line) for row in rows]
    report = CheckReport(len(rows))
    for finding in map_with_progress(partial(inspect_row, window), tasks, jobs=jobs, desc="check",
                                     progress=progress):
        if finding.problem:
            kind, reason = finding.problem
            report.problems.append({"path": finding.path, "kind": kind, "reason": reason, "line": finding.line})
        for kind, reason in finding.warnings:
            report.warnings.append({"path": finding.path, "kind": kind, "reason": reason, "line": finding.line})
    return report
