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
and refuses what `read_manifest` does, with the same messages. A plain file (what `write_manifest` writes) is split
on its bytes with numpy, labels matched with np.unique, so start-up takes ~2 s of CPU for 2M rows instead of ~6;
any other file goes through the `csv` module in chunks, so that the per-row Python objects of parsing never exist
for all rows at once.
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
    """`read_manifest`'s rows as a `CompactManifest`: the same checks and messages, a fraction of the memory.

    Plain files (no quotes, the same number of fields on every line, fields without surrounding blanks: what
    `write_manifest` and `mbt data prepare` write) are split with numpy on the bytes (`_plain_rows`); anything else,
    and any row that breaks a rule, goes through the `csv` module row by row, which also words the refusals."""
    path = Path(path)
    text = _decode(path)
    plain = _plain_rows(text, path, labels_required)
    if plain is None:
        return _csv_rows(text, path, labels_required)
    del text
    # The arrays are copied once the parse's scratch arrays are freed, and the freed memory is given back: arrays
    # left where the parse allocated them cost each forked loader worker tens of MB of private pages (measured:
    # 8 workers, 2M rows, +0.5 GB PSS; with the copy as the csv path, benchmarks/manifest_memory.py).
    rows = CompactManifest(plain.base, *(np.array(a, copy=True) for a in (plain.paths, plain.path_offsets)),
                           list(plain.label_names), *(np.array(a, copy=True) for a in (
                               plain.label_ids, plain.label_offsets, plain.start, plain.end, plain.lines)))
    del plain
    _release_freed_memory()
    return rows


def _release_freed_memory() -> None:
    """Give freed heap memory back to the OS (glibc keeps freed heap pages mapped until trimmed)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _header(text: str) -> list[str]:
    first = text.split("\n", 1)[0]
    return [h.strip() for h in next(csv.reader([first.rstrip("\r")]), [])]


_FIELD_EDGE_OK = np.zeros(256, dtype=bool)
_FIELD_EDGE_OK[0x21:0x7f] = True  # a field starting or ending with a blank (or a non-ASCII byte) may need strip()


def _plain_rows(text: str, path: Path, labels_required: bool) -> CompactManifest | None:
    """The rows of a plain file split on its bytes with numpy, or None when the file is not plain (or some row is
    invalid: the csv path then finds it and words the message). Python work is one dictionary lookup per row for
    its labels field (and per start / end value), never a per-row list of fields."""
    if '"' in text:
        return None
    header = _header(text)
    width = len(header)
    if "path" not in header or ("labels" not in header and labels_required) or len(set(header)) != width:
        return None
    data = text.encode("utf-8")
    body = np.frombuffer(data, dtype=np.uint8)
    first_newline = data.find(b"\n")
    if first_newline < 0:
        return None
    ends = np.flatnonzero(body == 10)
    if len(data) and data[-1:] != b"\n":
        ends = np.append(ends, len(data))
    starts = np.concatenate([[0], ends[:-1] + 1])[1:]  # the rows' lines (the header's dropped)
    ends = ends[1:]
    if b"\r" in data:
        if data.count(b"\r") != data.count(b"\r\n"):
            return None
        ends = ends - (body[np.maximum(ends - 1, 0)] == 13)
    keep = ends > starts  # csv skips empty lines without counting them
    starts, ends = starts[keep], ends[keep]
    rows = len(starts)
    commas = np.flatnonzero(body == 44)
    first_comma = np.searchsorted(commas, starts)
    if not np.array_equal(np.searchsorted(commas, ends) - first_comma, np.full(rows, width - 1)):
        return None
    # field j of row i: [bounds[i, j] + 1, bounds[i, j + 1]) with bounds = [line start - 1, commas..., line end]
    bounds = np.empty((rows, width + 1), dtype=np.int64)
    bounds[:, 0] = starts - 1
    bounds[:, -1] = ends
    if width > 1:
        bounds[:, 1:-1] = commas[first_comma[:, None] + np.arange(width - 1)]
    del commas, first_comma
    column = {name: i for i, name in enumerate(header)}

    def field(name: str) -> tuple[np.ndarray, np.ndarray]:
        return bounds[:, column[name]] + 1, bounds[:, column[name] + 1]

    path_start, path_end = field("path")
    if rows and ((path_end <= path_start).any() or not _FIELD_EDGE_OK[body[path_start]].all()
                 or not _FIELD_EDGE_OK[body[path_end - 1]].all()):
        return None  # an empty path, or one with blanks round it
    # the path bytes, in row order: a mask of the bytes inside path fields (one running sum over the file)
    inside = np.zeros(len(data) + 1, dtype=np.int8)
    inside[path_start] = 1  # a path's first byte is never another's end (a separator): no position is both
    inside[path_end] = -1
    paths = body[np.cumsum(inside[:-1], dtype=np.int8).view(bool)].copy()
    del inside
    path_offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(path_end - path_start, out=path_offsets[1:])

    if "labels" in column:
        labels = _plain_labels(data, body, *field("labels"))
    else:
        labels = ([], np.zeros(0, dtype=np.int32), np.zeros(rows, dtype=np.int64))
    label_names, flat, counts = labels
    label_offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(counts, out=label_offsets[1:])
    lines = np.arange(2, rows + 2, dtype=np.int32)
    times = {}
    for key in ("start", "end"):
        times[key] = np.full(rows, np.nan)
        if key in column:
            seen: dict[bytes, float] = {}
            parsed = []
            for i, (a, b) in enumerate(zip(*(x.tolist() for x in field(key)))):
                raw = data[a:b]
                value = seen.get(raw)
                if value is None:
                    try:
                        value = _seconds(raw.decode("utf-8"), path, i + 2, key)
                    except ManifestError:
                        return None  # the csv path words it, as the first of the rows' problems
                    if len(seen) < 1_000_000:
                        seen[raw] = value
                parsed.append(value)
            times[key] = np.asarray(parsed, dtype=np.float64)
    if (times["end"] <= times["start"]).any():  # False where either is NaN (not given)
        return None
    return CompactManifest(path.parent, paths, path_offsets, label_names, flat, label_offsets, times["start"],
                           times["end"], lines)


MAX_PLAIN_LABEL_BYTES = 48  # longer labels are looked up one field at a time (a padded table would be large)


def _plain_labels(data: bytes, body: np.ndarray, start: np.ndarray, end: np.ndarray
                  ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(label names in order of first appearance, label ids in row order, labels per row) of the `labels`
    fields [start, end): split at ';' and matched with np.unique on a padded byte table, no Python per row.
    Empty parts are dropped, as `read_manifest` drops them; parts with blanks round them are stripped first."""
    rows = len(start)
    semis = np.flatnonzero(body == 59)
    owner = np.searchsorted(start, semis, side="right") - 1
    semis = semis[(owner >= 0) & (semis < end[np.maximum(owner, 0)])]  # the ';' inside labels fields
    part_start = np.sort(np.concatenate([start, semis + 1]))
    part_end = np.sort(np.concatenate([semis, end]))
    used = part_end > part_start  # empty parts are dropped
    part_start, part_end = part_start[used], part_end[used]
    if not (_FIELD_EDGE_OK[body[part_start]].all() and _FIELD_EDGE_OK[body[part_end - 1]].all()):
        return _looked_up_labels(data, start, end)  # blanks to strip (or non-ASCII edges): str.strip() decides
    owner = np.searchsorted(start, part_start, side="right") - 1
    counts = np.bincount(owner, minlength=rows).astype(np.int64)
    lengths = part_end - part_start
    width = int(lengths.max()) if len(lengths) else 0
    if width > MAX_PLAIN_LABEL_BYTES:
        return _looked_up_labels(data, start, end)
    table = np.zeros((len(part_start), max(width, 1)), dtype=np.uint8)
    for j in range(width):
        has = lengths > j
        table[has, j] = body[part_start[has] + j]
    # one 64-bit hash per part (sorting integers is far cheaper than sorting byte strings); parts that share a hash
    # are then checked equal byte for byte, so a collision can only send the file down the slow path
    keys = np.zeros(len(part_start), dtype=np.uint64)
    for j in range(table.shape[1]):
        keys = (keys ^ table[:, j]) * np.uint64(0x100000001B3)  # FNV-1a
    keys ^= lengths.astype(np.uint64)
    unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    if not np.array_equal(table, table[first[inverse]]):
        return _looked_up_labels(data, start, end)
    by_appearance = np.argsort(first, kind="stable")  # ids as `read_manifest` numbers labels: first seen first
    rank = np.empty(len(unique), dtype=np.int32)
    rank[by_appearance] = np.arange(len(unique), dtype=np.int32)
    names = [data[part_start[first[u]]:part_end[first[u]]].decode("utf-8") for u in by_appearance.tolist()]
    return names, rank[inverse], counts


def _looked_up_labels(data: bytes, start: np.ndarray, end: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    label_ids: dict[str, int] = {}
    cache: dict[bytes, list[int]] = {}
    flat: list[int] = []
    counts = []
    for lo, hi in zip(start.tolist(), end.tolist()):
        raw = data[lo:hi]
        ids = cache.get(raw)
        if ids is None:
            ids = [label_ids.setdefault(label, len(label_ids))
                   for label in (part.strip() for part in raw.decode("utf-8").split(";")) if label]
            if len(cache) < 1_000_000:
                cache[raw] = ids
        flat += ids
        counts.append(len(ids))
    return list(label_ids), np.asarray(flat, dtype=np.int32), np.asarray(counts, dtype=np.int64)


def _csv_rows(text: str, path: Path, labels_required: bool) -> CompactManifest:
    reader = csv.reader(io.StringIO(text, newline=""))
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
