"""Manifests: CSV files `path,labels[,start,end]` with a header row, plus a classes file (one name a line).

`path` is relative to the manifest's folder (or absolute); `labels` are class names separated by `;` (one for
single-label sets, several for multi-label sets); `start` / `end` are seconds and optional.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path


class ManifestError(ValueError):
    """A malformed manifest or classes file; the message names the file and the line."""


@dataclass(frozen=True)
class ManifestRow:
    path: Path  # resolved against the manifest's folder
    labels: tuple[str, ...]
    start: float | None = None
    end: float | None = None
    line: int = 0  # line number in the manifest, for messages


def read_text(path: str | Path, what: str) -> str:
    """A text file's contents: UTF-8, with or without a byte-order mark (spreadsheet programs write one). Other
    encodings are a ManifestError naming the file, the line and the byte, since guessing would corrupt labels."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ManifestError(f"{path}: cannot read {what}: is a directory") from None
    except OSError as e:
        raise ManifestError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ManifestError(f"{path}:{line}: {what} is not UTF-8 text (byte 0x{data[e.start]:02x} at column "
                            f"{column}); save it as UTF-8") from None


def read_classes(path: str | Path) -> list[str]:
    path = Path(path)
    names = [line.strip() for line in read_text(path, "classes file").splitlines()]
    while names and not names[-1]:
        names.pop()
    for i, name in enumerate(names, 1):
        if not name:
            raise ManifestError(f"{path}:{i}: empty class name")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ManifestError(f"{path}: class {dup!r} is listed twice")
    if not names:
        raise ManifestError(f"{path}: no classes")
    return names


def _seconds(value: str, path: Path, line: int, key: str) -> float | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise ManifestError(f"{path}:{line}: {key} {value!r} is not a number of seconds") from None
    if seconds < 0:
        raise ManifestError(f"{path}:{line}: {key} {seconds} is negative")
    return seconds


def read_manifest(path: str | Path, *, labels_required: bool = True) -> list[ManifestRow]:
    """The rows of a manifest. `labels_required=False` (prediction) also accepts a header with `path` alone."""
    path = Path(path)
    with io.StringIO(read_text(path, "manifest"), newline="") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if "path" not in header or ("labels" not in header and labels_required):
            raise ManifestError(f"{path}: header must start with path,labels[,start,end]; got {header}")
        rows = []
        for line, record in enumerate(reader, 2):
            record = {(k or "").strip(): (v or "") for k, v in record.items()}
            file = record["path"].strip()
            if not file:
                raise ManifestError(f"{path}:{line}: empty path")
            labels = tuple(label.strip() for label in record.get("labels", "").split(";") if label.strip())
            start = _seconds(record.get("start", ""), path, line, "start")
            end = _seconds(record.get("end", ""), path, line, "end")
            if start is not None and end is not None and end <= start:
                raise ManifestError(f"{path}:{line}: end {end} is not after start {start}")
            media = Path(file)
            rows.append(ManifestRow(media if media.is_absolute() else path.parent / media, labels, start, end, line))
    return rows


def write_manifest(path: str | Path, rows: list[ManifestRow], relative: bool = True) -> None:
    """Write rows; paths are stored relative to the manifest's folder when possible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with_times = any(r.start is not None or r.end is not None for r in rows)
    # abspath, not resolve(): a row's symbolic link is kept as the user named it, and a link loop (which
    # resolve() raises on) is the data checker's to report, not a reason to fail writing the manifest
    base = Path(os.path.abspath(path.parent))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels", "start", "end"] if with_times else ["path", "labels"])
        for r in rows:
            file = Path(r.path)
            if relative:
                file = Path(os.path.abspath(file))
                try:
                    file = file.relative_to(base)
                except ValueError:
                    pass
            row = [file.as_posix(), ";".join(r.labels)]
            if with_times:
                row += ["" if r.start is None else f"{r.start:g}", "" if r.end is None else f"{r.end:g}"]
            writer.writerow(row)


def write_classes(path: str | Path, names: list[str]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
