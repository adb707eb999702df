"""Manifests and classes files from the official annotation files of AudioSet, VGGSound and Epic-Kitchens-100.

Each `prepare_*` function reads the annotation files as they are distributed, looks every row's media file up in a
local folder (searched recursively, so any sub-folder layout works) and writes one manifest per split plus a
classes file. Rows whose file is not there are counted and listed in `<split>_missing.txt` (ids to download), and
are left out of the manifest unless `keep_missing` is set.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mbt.data.manifest import ManifestError, ManifestRow, read_text, write_classes, write_manifest

log = logging.getLogger("mbt.data")

# Tried in this order when a name pattern has no extension of its own, or the one it has is not there.
MEDIA_EXTENSIONS = (".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov", ".m4v")

# Name patterns (str.format) tried in order. `{start}` / `{end}` are seconds written as short as they go (30, 2.5);
# a format spec picks another spelling: `{start:.3f}` 30.000 (AudioSet's CSV), `{start:06d}` 000030 (VGGSound).
AUDIOSET_PATTERNS = ("{ytid}_{start}.mp4", "{ytid}_{start}_{end}.mp4", "{ytid}_{start:.3f}_{end:.3f}.mp4",
                     "{ytid}_{start:.1f}_{end:.1f}.mp4", "{ytid}_{start_ms}_{end_ms}.mp4",
                     "{ytid}_{start:06d}_{end:06d}.mp4", "Y{ytid}.mp4", "{ytid}.mp4", "{ytid}_{start:06d}.mp4")
VGGSOUND_PATTERNS = ("{ytid}_{start:06d}.mp4", "{ytid}_{start:06d}_{end:06d}.mp4", "{ytid}_{start}.mp4",
                     "{ytid}_{start}_{end}.mp4", "{ytid}_{start:.3f}_{end:.3f}.mp4", "{ytid}.mp4")
EPIC_PATTERNS = ("{participant_id}/videos/{video_id}.MP4", "{video_id}.MP4")


class Seconds(float):
    """A segment time in name patterns: `{start}` 30 or 2.5 (no trailing zeros), `{start:.3f}` 30.000, and an
    integer spec such as `{start:06d}` the whole seconds (000030), as VGGSound names its clips."""

    def __format__(self, spec: str) -> str:
        if not spec:
            return format(float(self), "g")
        if spec[-1] in "dxXob":
            return format(int(self), spec)
        return format(float(self), spec)

    def __str__(self) -> str:
        return format(self, "")


@dataclass
class SplitResult:
    manifest: Path
    rows: int  # annotation rows read
    written: int  # rows in the manifest
    missing: int  # rows whose media file was not found
    missing_list: Path | None = None  # one id a line; None when nothing is missing
    dropped: int = 0  # rows left out for another reason (e.g. an empty time window), logged with the line
    matched: dict[str, int] = field(default_factory=dict)  # name pattern -> rows whose file it found


@dataclass
class PrepareResult:
    classes: Path
    num_classes: int
    splits: dict[str, SplitResult] = field(default_factory=dict)
    class_splits: tuple[int, ...] | None = None  # for multi-head sets (Epic-Kitchens: verbs, nouns)
    multi_label: bool = False

    def summary(self) -> str:
        lines = [f"classes: {self.classes} ({self.num_classes})"]
        for name, s in self.splits.items():
            line = f"{name}: {s.written} rows in {s.manifest} ({s.rows} annotated, {s.missing} without a media file"
            line += f", listed in {s.missing_list})" if s.missing_list else ")"
            if s.dropped:
                line += f"; {s.dropped} dropped (see the log)"
            lines.append(line)
            if s.matched:
                lines.append("  found by " + ", ".join(f"{pattern!r}: {count}" for pattern, count in s.matched.items()))
        settings = [f"model.num_classes={self.num_classes}", f"data.classes={self.classes}"]
        if self.multi_label:
            settings.append("model.multi_label=true")
        if self.class_splits:
            settings.append(f"model.class_splits=[{', '.join(map(str, self.class_splits))}]")
        lines.append("config: " + " ".join(settings))
        return "\n".join(lines)


# ==================================================================== media lookup
class MediaIndex:
    """Every file under a media folder, found by relative path or, failing that, by file name alone."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: media folder does not exist")
        self.by_relpath: dict[str, Path] = {}
        self.by_name: dict[str, Path] = {}
        for folder, _, files in os.walk(self.root, followlinks=True):
            for name in files:
                file = Path(folder) / name
                self.by_relpath[file.relative_to(self.root).as_posix()] = file
                self.by_name.setdefault(name, file)

    def find(self, patterns: Iterable[str], fields: dict[str, object]) -> tuple[Path, str] | tuple[None, None]:
        """The first file one of `patterns` names, and that pattern."""
        for pattern in patterns:
            for candidate in _with_extensions(pattern.format(**fields)):
                found = self.by_relpath.get(candidate) or self.by_name.get(Path(candidate).name)
                if found is not None:
                    return found, pattern
        return None, None


def _with_extensions(name: str) -> Iterator[str]:
    yield name
    stem, suffix = os.path.splitext(name)
    if not any(c.isalpha() for c in suffix):  # `id_2.5`: the ".5" is a time, not an extension
        stem, suffix = name, ""
    for ext in MEDIA_EXTENSIONS:
        if ext != suffix:
            yield stem + ext


def _time_fields(start: float, end: float | None) -> dict[str, object]:
    """Name-pattern fields for a segment: seconds (see `Seconds`) and whole milliseconds."""
    fields: dict[str, object] = {"start": Seconds(start), "start_ms": int(round(start * 1000))}
    if end is not None:
        fields.update(end=Seconds(end), end_ms=int(round(end * 1000)))
    return fields


def _patterns(patterns: str | Sequence[str] | None, defaults: tuple[str, ...]) -> tuple[str, ...]:
    """The `--pattern`s given (in order), else the defaults; each checked by formatting sample fields."""
    if patterns is None or (not isinstance(patterns, str) and not patterns):
        return defaults
    patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
    for pattern in patterns:
        try:
            pattern.format(ytid="x", **_time_fields(2.5, 12.5), participant_id="P", video_id="V")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"--pattern {pattern!r}: bad field {e}; use e.g. {defaults[0]!r}") from None
    return patterns


def _check_label(name: str, where: str) -> str:
    # `;` separates labels in a manifest, so a class name holding one could not be read back.
    if ";" in name or not name:
        raise ManifestError(f"{where}: class name {name!r} is empty or contains ';'")
    return name


class _SplitWriter:
    """Collects one split's rows, then writes its manifest and the ids of its missing media files."""

    def __init__(self, out: Path, name: str, keep_missing: bool):
        self.out, self.name, self.keep_missing = out, name, keep_missing
        self.rows: list[ManifestRow] = []
        # a dict keeps first-seen order and lists an id once (an Epic video holds many segments)
        self.missing_ids: dict[str, None] = {}
        self.missing_rows = 0
        self.read = 0
        self.dropped = 0
        self.matched: Counter[str] = Counter()

    def add(self, found: tuple[Path, str] | tuple[None, None], expected: Path, labels: tuple[str, ...],
            missing_id: str, start: float | None = None, end: float | None = None) -> None:
        """`found`: (file, the pattern that named it) from MediaIndex.find, or (None, None)."""
        self.read += 1
        found, pattern = found
        if pattern is not None:
            self.matched[pattern] += 1
        if found is None:
            self.missing_rows += 1
            self.missing_ids[missing_id] = None
            if not self.keep_missing:
                return
        self.rows.append(ManifestRow(found or expected, labels, start, end))

    def drop(self) -> None:
        self.read += 1
        self.dropped += 1

    def finish(self) -> SplitResult:
        manifest = self.out / f"{self.name}.csv"
        write_manifest(manifest, self.rows)
        missing_list = None
        if self.missing_ids:
            missing_list = self.out / f"{self.name}_missing.txt"
            missing_list.write_text("".join(f"{m}\n" for m in self.missing_ids), encoding="utf-8")
            log.warning("%s: %d of %d rows have no media file (ids in %s)", self.name, self.missing_rows,
                        self.read, missing_list)
        return SplitResult(manifest, self.read, len(self.rows), self.missing_rows, missing_list, self.dropped,
                           dict(self.matched.most_common()))


def _read_csv(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, stripped fields) of each record of a CSV file, `#` comment lines and blank lines skipped."""
    with io.StringIO(read_text(path, "annotation file"), newline="") as handle:
        # skipinitialspace: AudioSet writes `id, 30.000, 40.000, "/m/a,/m/b"`, a space before the quote.
        reader = csv.reader(handle, skipinitialspace=True)
        for fields in reader:
            if not fields or not "".join(fields).strip() or fields[0].lstrip().startswith("#"):
                continue
            yield reader.line_num, [f.strip() for f in fields]


def _header(path: Path, records: Iterator[tuple[int, list[str]]], needed: tuple[str, ...]) -> dict[str, int]:
    """Column index of each needed column, from the first record (the header)."""
    try:
        _, header = next(records)
    except StopIteration:
        raise ManifestError(f"{path}: empty file") from None
    columns = {name: i for i, name in enumerate(header)}
    absent = [name for name in needed if name not in columns]
    if absent:
        raise ManifestError(f"{path}: header lacks column(s) {absent}; got {header}")
    return columns


def _field(path: Path, line: int, fields: list[str], index: int, name: str) -> str:
    if index >= len(fields):
        raise ManifestError(f"{path}:{line}: missing column {name!r}")
    return fields[index]


def _number(path: Path, line: int, text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ManifestError(f"{path}:{line}: {name} {text!r} is not a number") from None


def _annotation_file(annotations: Path, name: str) -> Path:
    """An official file: `annotations` itself, or `name` inside the folder `annotations`."""
    path = annotations / name if annotations.is_dir() else annotations
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    return path


# ==================================================================== AudioSet
def read_audioset_classes(path: str | Path) -> tuple[list[str], dict[str, str]]:
    """`class_labels_indices.csv` -> (display names in index order, {mid: display name})."""
    path = Path(path)
    records = _read_csv(path)
    columns = _header(path, records, ("index", "mid", "display_name"))
    by_index: dict[int, tuple[str, str]] = {}
    for line, fields in records:
        index = _field(path, line, fields, columns["index"], "index")
        if not index.isdigit():
            raise ManifestError(f"{path}:{line}: index {index!r} is not a non-negative integer")
        mid = _field(path, line, fields, columns["mid"], "mid")
        name = _check_label(_field(path, line, fields, columns["display_name"], "display_name"), f"{path}:{line}")
        by_index[int(index)] = (mid, name)
    if sorted(by_index) != list(range(len(by_index))):
        raise ManifestError(f"{path}: indices are not 0..{len(by_index) - 1}")
    names = [by_index[i][1] for i in range(len(by_index))]
    if len(set(names)) != len(names):
        raise ManifestError(f"{path}: a display name is used by two classes")
    return names, {mid: name for mid, name in by_index.values()}


def prepare_audioset(annotations: str | Path, media: str | Path, out: str | Path, *,
                     pattern: str | Sequence[str] | None = None,
                     keep_missing: bool = False, full_videos: bool = False) -> PrepareResult:
    """AudioSet segment CSVs (`*_segments.csv`, or one such file) + `class_labels_indices.csv` -> manifests.

    Labels are display names; the classes file lists them in index order. Media files are taken to be the 10 s
    segments already cut (no start/end in the manifest) unless `full_videos`, when start/end come from the CSV.
    """
    annotations, out = Path(annotations), Path(out)
    if annotations.is_dir():
        segment_files = sorted(annotations.glob("*_segments.csv"))
        if not segment_files:
            raise FileNotFoundError(f"{annotations}: no *_segments.csv file")
        labels_file = _annotation_file(annotations, "class_labels_indices.csv")
    else:
        segment_files = [_annotation_file(annotations, "")]
        labels_file = _annotation_file(annotations.parent, "class_labels_indices.csv")
    names, by_mid = read_audioset_classes(labels_file)
    patterns = _patterns(pattern, AUDIOSET_PATTERNS)
    index = MediaIndex(media)
    result = PrepareResult(out / "classes.txt", len(names), multi_label=True)
    for segments in segment_files:
        split = segments.stem.removesuffix("_segments")
        writer = _SplitWriter(out, split, keep_missing)
        for line, fields in _read_csv(segments):
            if len(fields) < 4:
                raise ManifestError(f"{segments}:{line}: expected YTID, start_seconds, end_seconds, "
                                    f"positive_labels; got {fields}")
            ytid = fields[0]
            start = _number(segments, line, fields[1], "start_seconds")
            end = _number(segments, line, fields[2], "end_seconds")
            mids = [m.strip() for m in ",".join(fields[3:]).split(",") if m.strip()]
            unknown = [m for m in mids if m not in by_mid]
            if unknown:
                raise ManifestError(f"{segments}:{line}: label {unknown[0]!r} is not in {labels_file}")
            found = index.find(patterns, {"ytid": ytid, **_time_fields(start, end)})
            window = (start, end) if full_videos else (None, None)
            writer.add(found, index.root / patterns[0].format(ytid=ytid, **_time_fields(start, end)),
                       tuple(by_mid[m] for m in mids), f"{ytid},{fields[1]},{fields[2]}", *window)
        result.splits[split] = writer.finish()
    write_classes(result.classes, names)
    return result


# ==================================================================== VGGSound
VGGSOUND_CLIP_SECONDS = 10.0


def prepare_vggsound(annotations: str | Path, media: str | Path, out: str | Path, *,
                     pattern: str | Sequence[str] | None = None,
                     keep_missing: bool = False, full_videos: bool = False) -> PrepareResult:
    """`vggsound.csv` (no header: ytid,start_seconds,label,split) -> train.csv, test.csv and classes.txt.

    The classes file is the sorted set of labels (the order every VGGSound codebase uses). Media files are the
    10 s clips (`{ytid}_{start:06d}.mp4`) unless `full_videos`, when start/end select the clip.
    """
    path = _annotation_file(Path(annotations), "vggsound.csv")
    out = Path(out)
    patterns = _patterns(pattern, VGGSOUND_PATTERNS)
    index = MediaIndex(media)
    records = []
    for line, fields in _read_csv(path):
        if len(fields) != 4:
            raise ManifestError(f"{path}:{line}: expected ytid,start_seconds,label,split (quote a label that "
                                f"holds a comma); got {len(fields)} fields")
        ytid, start_text, label, split = fields
        if split not in ("train", "test"):
            raise ManifestError(f"{path}:{line}: split {split!r} is neither 'train' nor 'test'")
        start = _number(path, line, start_text, "start_seconds")
        records.append((ytid, start, _check_label(label, f"{path}:{line}"), split))
    names = sorted({label for _, _, label, _ in records})
    result = PrepareResult(out / "classes.txt", len(names))
    writers = {split: _SplitWriter(out, split, keep_missing) for split in ("train", "test")}
    for ytid, start, label, split in records:
        time_fields = _time_fields(start, start + VGGSOUND_CLIP_SECONDS)
        found = index.find(patterns, {"ytid": ytid, **time_fields})
        window = (start, start + VGGSOUND_CLIP_SECONDS) if full_videos else (None, None)
        writers[split].add(found, index.root / patterns[0].format(ytid=ytid, **time_fields), (label,),
                           f"{ytid},{start:g}", *window)
    for split, writer in writers.items():
        result.splits[split] = writer.finish()
    write_classes(result.classes, names)
    return result


# ==================================================================== Epic-Kitchens-100
EPIC_SPLITS = {"train": "EPIC_100_train.csv", "validation": "EPIC_100_validation.csv"}


def _timestamp(path: Path, line: int, text: str) -> float:
    """HH:MM:SS.ff -> seconds."""
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        hours, minutes, seconds = int(parts[0]), int(parts[1]), float(parts[2])
    except ValueError:
        raise ManifestError(f"{path}:{line}: timestamp {text!r} is not HH:MM:SS.ff") from None
    return hours * 3600 + minutes * 60 + seconds


def read_epic_classes(path: str | Path) -> list[str]:
    """`EPIC_100_{verb,noun}_classes.csv` (id,key,instances,category) -> keys in id order."""
    path = Path(path)
    records = _read_csv(path)
    columns = _header(path, records, ("id", "key"))
    keys: dict[int, str] = {}
    for line, fields in records:
        ident = _field(path, line, fields, columns["id"], "id")
        if not ident.isdigit():
            raise ManifestError(f"{path}:{line}: id {ident!r} is not a non-negative integer")
        keys[int(ident)] = _check_label(_field(path, line, fields, columns["key"], "key"), f"{path}:{line}")
    if sorted(keys) != list(range(len(keys))):
        raise ManifestError(f"{path}: ids are not 0..{len(keys) - 1}")
    return [keys[i] for i in range(len(keys))]


def epic_class_names(verbs: list[str], nouns: list[str]) -> tuple[list[str], list[str]]:
    """Class names for the two heads. A classes file lists each name once, so a key that is both a verb and a
    noun (`filter`, `water`, ...) becomes `filter (verb)` / `filter (noun)`; every other key is kept as it is."""
    shared = set(verbs) & set(nouns)
    return ([f"{v} (verb)" if v in shared else v for v in verbs],
            [f"{n} (noun)" if n in shared else n for n in nouns])


def prepare_epic_kitchens(annotations: str | Path, media: str | Path, out: str | Path, *,
                          pattern: str | Sequence[str] | None = None, keep_missing: bool = False) -> PrepareResult:
    """Epic-Kitchens-100 action segments -> train.csv / validation.csv with start/end, labels `verb;noun`.

    The classes file lists the 97 verbs then the 300 nouns, so `model.class_splits=[97, 300]`.
    """
    annotations, out = Path(annotations), Path(out)
    verbs, nouns = epic_class_names(read_epic_classes(_annotation_file(annotations, "EPIC_100_verb_classes.csv")),
                                    read_epic_classes(_annotation_file(annotations, "EPIC_100_noun_classes.csv")))
    patterns = _patterns(pattern, EPIC_PATTERNS)
    split_files = {split: annotations / name for split, name in EPIC_SPLITS.items() if (annotations / name).is_file()}
    if not split_files:
        raise FileNotFoundError(f"{annotations}: none of {sorted(EPIC_SPLITS.values())}")
    index = MediaIndex(media)
    result = PrepareResult(out / "classes.txt", len(verbs) + len(nouns), class_splits=(len(verbs), len(nouns)))
    needed = ("participant_id", "video_id", "start_timestamp", "stop_timestamp", "verb_class", "noun_class")
    for split, path in split_files.items():
        writer = _SplitWriter(out, split, keep_missing)
        records = _read_csv(path)
        columns = _header(path, records, needed)
        for line, fields in records:
            value = {name: _field(path, line, fields, columns[name], name) for name in needed}
            start = _timestamp(path, line, value["start_timestamp"])
            end = _timestamp(path, line, value["stop_timestamp"])
            if end <= start:
                log.warning("%s:%d: segment %s..%s is empty; left out", path, line, value["start_timestamp"],
                            value["stop_timestamp"])
                writer.drop()
                continue
            labels = []
            for key, classes in (("verb_class", verbs), ("noun_class", nouns)):
                if not value[key].isdigit() or int(value[key]) >= len(classes):
                    raise ManifestError(f"{path}:{line}: {key} {value[key]!r} is not in 0..{len(classes) - 1}")
                labels.append(classes[int(value[key])])
            fields_for_name = {"participant_id": value["participant_id"], "video_id": value["video_id"]}
            found = index.find(patterns, fields_for_name)
            writer.add(found, index.root / patterns[0].format(**fields_for_name), tuple(labels),
                       value["video_id"], start, end)
        result.splits[split] = writer.finish()
    write_classes(result.classes, verbs + nouns)
    return result
