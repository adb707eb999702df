"""Manifests held as a few numpy arrays, for millions of rows.

A list of `ManifestRow` costs a few hundred bytes of Python objects per row, and every data-loader worker forked
from the process holding it ends up with its own copy: merely reading an object writes its reference count, so
the pages it lives on are copied on first read (PyTorch's "copy-on-read" growth). `CompactManifest` keeps the
same information in arrays that nothing writes after reading, so forked workers share them:

    paths          one UTF-8 byte buffer of every row's path as written, + int64 offsets (row r: [o[r], o[r+1]))
    labels         int32 ids into `label_names` (the manifest's distinct labels), + int64 offsets
    start, end     float64 seconds, NaN where the manifest leaves them empty
    lines          int32 line number of every row, for messages (counted as `read_manifest` counts them)

It is a read-only sequence of `ManifestRow`s built when indexed, so code written for `read_manifest`'s list
(row.path / .labels / .start / .end / .line, len, iteration) works unchanged. `read_compact_manifest` accepts
and refuses what `read_manifest` does, with the same messages; it parses in chunks so that the per-row Python
objects of parsing never exist for all rows at once.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from mbt.data.manifest import ManifestError, ManifestRow, read_text

CHUNK_ROWS = 65_536  # rows parsed into Python objects at a time before they become arrays


class CompactManifest(Sequence):
    """A manifest's rows as arrays (see the module docstring); `rows[i]` builds row i's `ManifestRow`."""

    def __init__(self, base: Path, paths: np.ndarray, path_offsets: np.ndarray, label_names: list[str],
                 label_ids: np.ndarray, label_offsets: np.ndarray, start: np.ndarray, end: np.ndarray,
                 lines: np.ndarray):
        self.base = Path(base)
        self.paths, self.path_offsets = paths, path_offsets
        self.label_names = tuple(label_names)
        self.label_ids, self.label_offsets = label_ids, label_offsets
        self.start, self.end, self.lines = start, end, lines

    def __len__(self) -> int:
        return len(self.lines)

    def path_text(self, index: int) -> str:
        """Row `index`'s path as the manifest writes it."""
        return self.paths[self.path_offsets[index]:self.path_offsets[index + 1]].tobytes().decode("utf-8")

    def label_indices(self, index: int) -> np.ndarray:
        """Row `index`'s labels as ids into `label_names`."""
        return self.label_ids[self.label_offsets[index]:self.label_offsets[index + 1]]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        index = int(index) % len(self)
        start, end = float(self.start[index]), float(self.end[index])
        return ManifestRow(self.base / self.path_text(index),  # an absolute path replaces the base
                           tuple(self.label_names[i] for i in self.label_indices(index)),
                           None if start != start else start, None if end != end else end, int(self.lines[index]))

    def __iter__(self) -> Iterator[ManifestRow]:
        for index in range(len(self)):
            yield self[index]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.paths, self.path_offsets, self.label_ids, self.label_offsets,
                                      self.start, self.end, self.lines))


def _decode(path: Path) -> str:
    return read_text(path, "manifest")  # UTF-8 with or without BOM; other encodings named by file and line

def _seconds(value: str, path: Path, line: int, key: str) -> float:
    value = value.strip()
    if not value:
        return float("nan")
    try:
        seconds = float(value)
    except ValueError:
        raise ManifestError(f"{path}:{line}: {key} {value!r} is not a number of seconds") from None
    if seconds != seconds:  # NaN marks an empty field here, so a written "nan" cannot pass as one
        raise ManifestError(f"{path}:{line}: {key} {value!r} is not a number of seconds")
    if seconds < 0:
        raise ManifestError(f"{path}:{line}: {key} {seconds} is negative")
    return seconds


def read_compact_manifest(path: str | Path, *, labels_required: bool = True) -> CompactManifest:
    """`read_manifest`'s rows as a `CompactManifest`: the same checks and messages, a fraction of the memory."""
    path = Path(path)
    reader = csv.reader(io.StringIO(_decode(path), newline=""))
    header = [h.strip() for h in next(reader, [])]
    if "path" not in header or ("labels" not in header and labels_required):
        raise ManifestError(f"{path}: header must start with path,labels[,start,end]; got {header}")
    # as csv.DictReader: the last column of a repeated name wins
    column = {name: i for i, name in enumerate(header)}
    path_at, labels_at = column["path"], column.get("labels")
    start_at, end_at = column.get("start"), column.get("end")

    label_ids: dict[str, int] = {}
    parsed_labels: dict[str, list[int]] = {}  # a labels field seen before (AudioSet repeats them) costs a lookup
    path_chunks, path_lengths, id_chunks, id_counts, starts, ends, lines = [], [], [], [], [], [], []

    def flush(paths: list[str], ids: list[int], counts: list[int]) -> None:
        encoded = "".join(paths).encode("utf-8")
        path_chunks.append(np.frombuffer(encoded, dtype=np.uint8))
        path_lengths.append(np.fromiter((len(p.encode("utf-8")) if not p.isascii() else len(p) for p in paths),
                                        dtype=np.int64, count=len(paths)))
        id_chunks.append(np.asarray(ids, dtype=np.int32))
        id_counts.append(np.asarray(counts, dtype=np.int64))

    paths: list[str] = []
    ids: list[int] = []
    counts: list[int] = []
    line = 1
    for record in reader:
        if not record:  # csv.DictReader skips empty records without counting them
            continue
        line += 1
        width = len(record)
        file = record[path_at].strip() if path_at < width else ""
        if not file:
            raise ManifestError(f"{path}:{line}: empty path")
        field = record[labels_at] if labels_at is not None and labels_at < width else ""
        row_ids = parsed_labels.get(field)
        if row_ids is None:
            row_ids = [label_ids.setdefault(label, len(label_ids))
                       for label in (part.strip() for part in field.split(";")) if label]
            if len(parsed_labels) < 1_000_000:
                parsed_labels[field] = row_ids
        start = _seconds(record[start_at], path, line, "start") if start_at is not None and start_at < width \
            else float("nan")
        end = _seconds(record[end_at], path, line, "end") if end_at is not None and end_at < width else float("nan")
        if end <= start:  # False when either is NaN (not given)
            raise ManifestError(f"{path}:{line}: end {end} is not after start {start}")
        paths.append(file)
        ids.extend(row_ids)
        counts.append(len(row_ids))
        starts.append(start)
        ends.append(end)
        lines.append(line)
        if len(paths) == CHUNK_ROWS:
            flush(paths, ids, counts)
            paths, ids, counts = [], [], []
    flush(paths, ids, counts)

    def offsets(lengths: list[np.ndarray]) -> np.ndarray:
        out = np.zeros(sum(len(a) for a in lengths) + 1, dtype=np.int64)
        np.cumsum(np.concatenate(lengths), out=out[1:])
        return out

    return CompactManifest(path.parent, np.concatenate(path_chunks), offsets(path_lengths), list(label_ids),
                           np.concatenate(id_chunks), offsets(id_counts), np.asarray(starts, dtype=np.float64),
                           np.asarray(ends, dtype=np.float64), np.asarray(lines, dtype=np.int32))


def compact_label_indices(rows: CompactManifest, class_names: Sequence[str], *,
                          multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """(class indices, offsets) of every row's labels, checked as `ClipDataset` checks them (same messages), with
    one lookup per distinct label instead of one per row."""
    lookup = {name: i for i, name in enumerate(class_names)}
    unknown = [i for i, name in enumerate(rows.label_names) if name not in lookup]
    if unknown:
        bad = np.isin(rows.label_ids, np.asarray(unknown, dtype=np.int32))
        first = int(np.searchsorted(rows.label_offsets, int(np.argmax(bad)), side="right") - 1)
        label = next(rows.label_names[i] for i in rows.label_indices(first) if i in set(unknown))
        raise ManifestError(f"manifest line {rows.lines[first]} ({rows[first].path}): label {label!r} is not in "
                            "the classes file")
    if not multi_label:
        counts = np.diff(rows.label_offsets)
        if (counts != 1).any():
            first = int(np.argmax(counts != 1))
            row = rows[first]
            raise ManifestError(f"manifest line {row.line} ({row.path}): a single-label dataset needs exactly one "
                                f"label, got {list(row.labels)}")
    to_class = np.asarray([lookup[name] for name in rows.label_names] or [0], dtype=np.int64)
    return to_class[rows.label_ids], rows.label_offsets.copy()
