"""Tagging many files into a JSON-lines file, resumably: one strict-JSON line per clip, written as it is predicted.

A re-run with the same output reads the lines already there and predicts only the clips they lack, so a killed
job (or a folder that gained files) continues where it stopped. A clip is identified by its path and, for
manifest rows that select a segment, its start / end. A line cut short by a kill is dropped and redone.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mbt.data.manifest import read_manifest
from mbt.engine.predict import Prediction, predict_files
from mbt.media.preprocess import Preprocessor
from mbt.model import MBT

log = logging.getLogger("mbt.predict")

# What `--folder` picks up: the containers PyAV reads that hold video, audio or both.
MEDIA_SUFFIXES = frozenset({".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".ts", ".flv",
                            ".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac"})


@dataclass(frozen=True)
class Clip:
    path: str
    start: float | None = None
    end: float | None = None

    @property
    def key(self) -> tuple[str, float | None, float | None]:
        return (self.path, self.start, self.end)


@dataclass
class TaggingReport:
    out: Path
    total: int  # clips asked for
    done_before: int  # already in the output
    predicted: int  # predicted by this run
    skipped: int  # lines of the output (old and new) that are skips
    missing_streams: Counter = field(default_factory=Counter)  # stream -> files of this run that lacked it
    with_warnings: int = 0  # files of this run with warnings

    def summary(self) -> str:
        parts = [f"{self.predicted} clips predicted"]
        if self.done_before:
            parts.append(f"{self.done_before} already in the output")
        parts.append(f"{self.skipped} skipped" + (" (see their \"skipped\" reason; --retry-skipped tries them "
                                                  "again)" if self.skipped else ""))
        lines = [f"{', '.join(parts)}: {self.out}"]
        for stream, count in sorted(self.missing_streams.items()):
            lines.append(f"  {count} files without a {stream} track were predicted from the other streams")
        if self.with_warnings:
            lines.append(f"  {self.with_warnings} files have warnings (their \"warnings\" in the output)")
        return "\n".join(lines)


def manifest_clips(manifest: str | Path) -> list[Clip]:
    """The clips of a manifest (labels optional): path resolved against the manifest's folder, start / end."""
    return [Clip(str(row.path), row.start, row.end) for row in read_manifest(manifest, labels_required=False)]


def folder_clips(folder: str | Path) -> list[Clip]:
    """Every media file under `folder` (recursively, by suffix), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    files = [Path(root) / name for root, _, names in os.walk(folder, followlinks=True) for name in names
             if Path(name).suffix.lower() in MEDIA_SUFFIXES]
    if not files:
        raise FileNotFoundError(f"{folder}: no media files (looked for {', '.join(sorted(MEDIA_SUFFIXES))})")
    return [Clip(str(f)) for f in sorted(files)]


def _record(prediction: Prediction, clip: Clip) -> dict:
    record = {"path": clip.path}
    if clip.start is not None or clip.end is not None:
        record |= {"start": clip.start, "end": clip.end}
    return record | {k: v for k, v in prediction.to_dict().items() if k != "path"}


def read_done(out: Path, *, retry_skipped: bool = False) -> tuple[dict[tuple, dict], bool]:
    """The records already in `out` by clip key, and whether the file needs rewriting (a cut or dropped line)."""
    done: dict[tuple, dict] = {}
    rewrite = False
    if not out.exists():
        return done, rewrite
    with out.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                record = json.loads(line)
                key = (record["path"], record.get("start"), record.get("end"))
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning("%s:%d: not a complete prediction line (cut short?); it is redone", out, number)
                rewrite = True
                continue
            if retry_skipped and record.get("skipped"):
                rewrite = True
                continue
            done[key] = record
    return done, rewrite


def _rewrite(out: Path, records: Iterable[dict]) -> None:
    temporary = out.with_name(out.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, allow_nan=False) + "\n")
    temporary.replace(out)


def predict_to_jsonl(model: MBT, preprocessor: Preprocessor, clips: list[Clip], out: str | Path, *, top_k: int = 5,
                     num_clips: int = 4, num_crops: int = 1, batch_size: int = 8, num_workers: int = 0,
                     retry_skipped: bool = False, progress: bool = True, fuse: bool = True) -> TaggingReport:
    """Predict the clips not yet in `out` and append a line for each, in input order (raises OSError when `out`
    cannot be written)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done, rewrite = read_done(out, retry_skipped=retry_skipped)
    if rewrite:
        _rewrite(out, done.values())
    unique = list({clip.key: clip for clip in clips}.values())  # a manifest listing a clip twice: predicted once
    todo = [clip for clip in unique if clip.key not in done]
    report = TaggingReport(out, len(unique), len(unique) - len(todo), 0,
                           sum(1 for r in done.values() if r.get("skipped")))
    if todo:
        log.info("predicting %d clips (%d already in %s)", len(todo), report.done_before, out)
    with out.open("a", encoding="utf-8") as handle:
        predictions = predict_files(model, preprocessor, [c.path for c in todo], top_k=top_k, num_clips=num_clips,
                                    num_crops=num_crops, spans=[(c.start, c.end) for c in todo],
                                    batch_size=batch_size, num_workers=num_workers, progress=progress, fuse=fuse)
        for clip, prediction in zip(todo, predictions):
            # one write per line, flushed: a kill leaves at most one cut line, which the next run redoes
            handle.write(json.dumps(_record(prediction, clip), allow_nan=False) + "\n")
            handle.flush()
            report.predicted += 1
            report.skipped += prediction.skipped is not None
            report.missing_streams.update(prediction.missing if prediction.skipped is None else ())
            report.with_warnings += bool(prediction.warnings)
    return report
