"""`mbt data shard`: a manifest's clips as WebDataset tar shards, resumably, with an index `DIR/shards.json`.

At AudioSet scale the files are the problem (2M small files on shared storage, no way to stream from object
storage): shards turn them into a few hundred large sequential reads. Each sample of a shard is two tar members
with the same key: `KEY.<ext>`, the media bytes as stored (or re-encoded with `--transcode`, by the functions of
`mbt data transcode`), and `KEY.json`, {"labels", "start", "end", "path", "line"} of its manifest row.

Rows are written in a shuffled order (`order_seed`; `--keep-order` keeps the manifest's): a manifest sorted by
class would otherwise give shards of one class each, which shard-order shuffling cannot mix (see
`data/shard_stream.py` for how training reads them).

Resumable: a shard is written under a temporary name and renamed once complete, then the index is rewritten
(atomically) listing it. An interrupted run leaves the finished shards and their index; a rerun with the same
manifest (sha256) and settings continues after the last finished shard. A row whose file is missing or unreadable
(or fails to transcode) is left out, listed in the index's `skipped` and counted; the other rows go on.

The index (`shards.json`) is what streaming needs up front: the shard names and their sample counts (an epoch is
their sum, so every rank can take the same number of steps), the classes, and the manifest's sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mbt.bars import bar
from mbt.data.manifest import ManifestError, ManifestRow, read_manifest
from mbt.errors import ConfigError, DataError
from mbt.fileio import atomic_write, write_json
from mbt.fileio import dumps as strict_dumps
from mbt.media.decode import MediaError, check_file

log = logging.getLogger("mbt.data")

INDEX_NAME = "shards.json"
INDEX_FORMAT = "mbt-shards/1"
DEFAULT_SHARD_SIZE = 10**9  # 1 GB: a few seconds of sequential reading, few enough files for any file system
TAR_OVERHEAD = 3 * 512  # two tar headers + padding per sample, counted against the shard size
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """'1GB' -> 10**9, '512MiB' -> 512 * 2**20, '2000000' -> bytes; anything else is a ValueError naming it."""
    match = _SIZE.match(str(text))
    unit = (match.group(2) or "").lower() if match else None
    if not match or unit not in _UNITS:
        raise ValueError(f"--shard-size: {text!r} is not a size such as 1GB, 500MB or 256MiB")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size < 1:
        raise ValueError(f"--shard-size: {text!r} must be at least 1 byte")
    return size


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def media_extension(path: Path) -> str:
    """The tar member suffix of a row's media: its own (lower case, so FFmpeg-independent readers can guess the
    container), or 'media' when it has none a WebDataset key rule would keep intact."""
    suffix = path.suffix.lower().lstrip(".")
    return suffix if re.fullmatch(r"[a-z0-9]{1,8}", suffix) and suffix != "json" else "media"


@dataclass
class ShardReport:
    out: Path
    shards: int = 0  # shards in the index
    written: int = 0  # shards written by this run
    samples: int = 0  # samples in the index
    skipped: list[dict[str, Any]] = field(default_factory=list)  # rows left out: {"path", "line", "kind", "reason"}
    bytes: int = 0
    already_complete: bool = False

    def summary(self) -> str:
        done = "already complete" if self.already_complete else f"{self.written} written by this run"
        lines = [f"{self.samples} samples in {self.shards} shard(s) ({self.bytes / 1e9:.2f} GB; {done}): "
                 f"{self.out / INDEX_NAME}"]
        if self.skipped:
            lines.append(f"{len(self.skipped)} row(s) left out (listed in the index's 'skipped'):")
            lines += [f"  {s['path']} (line {s['line']}): {s['kind']}: {s['reason']}" for s in self.skipped[:20]]
            if len(self.skipped) > 20:
                lines.append(f"  ... and {len(self.skipped) - 20} more")
        return "\n".join(lines)


def _settings(shard_size: int, transcode: dict[str, Any] | None, order_seed: int | None) -> dict[str, Any]:
    return {"shard_size": shard_size, "transcode": transcode, "order_seed": order_seed}


def _load_previous(out: Path, sha: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    path = out / INDEX_NAME
    if not path.exists():
        return None
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        previous = {key: index[key] for key in settings}
        previous_sha = index["manifest_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a readable shard index ({type(e).__name__}: {e}); remove the folder or "
                          "choose another --out") from None
    if previous_sha != sha or previous != settings:
        what = "another manifest" if previous_sha != sha else f"other settings ({previous})"
        raise ConfigError(f"{out}: holds shards of {what}; choose another --out, or remove it to start over")
    return index


def write_shards(manifest: str | Path, out: str | Path, *, shard_size: int = DEFAULT_SHARD_SIZE,
                 transcode: dict[str, Any] | None = None, order_seed: int | None = 0, prefix: str | None = None,
                 jobs: int = 1, progress: bool = True) -> ShardReport:
    """Write the rows of `manifest` as shards `out/<prefix>-NNNNNN.tar` (prefix: the manifest's name) and their
    index; continue an interrupted run. `transcode`: keyword arguments of `transcode_file` (short_side, gop, fps),
    or None to store the media bytes as they are. `order_seed` None keeps the manifest's row order."""
    import webdataset as wds  # only the shard commands need it

    manifest, out = Path(manifest), Path(out)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1 byte, got {shard_size}")
    rows = read_manifest(manifest)
    if not rows:
        raise ManifestError(f"{manifest}: no rows to shard")
    sha = file_sha256(manifest)
    settings = _settings(shard_size, transcode, order_seed)
    prefix = prefix or manifest.stem
    order = (np.random.default_rng(order_seed).permutation(len(rows)) if order_seed is not None
             else np.arange(len(rows)))
    shared = len(rows) - len({row.path for row in rows})
    if shared:
        log.warning("%d row(s) share a media file with another row: each sample stores the whole file (with "
                    "start/end), so those files are stored more than once", shared)
    out.mkdir(parents=True, exist_ok=True)
    index = _load_previous(out, sha, settings) or {
        "format": INDEX_FORMAT, "manifest": str(manifest), "manifest_sha256": sha, **settings, "complete": False,
        "rows": len(rows), "samples": 0, "classes": [], "shards": [], "skipped": []}
    report = ShardReport(out)
    for stale in out.glob(f".{prefix}-*.tar.tmp"):  # a shard an interrupted run was writing
        stale.unlink(missing_ok=True)
    if index["complete"]:
        report.already_complete = True
    position = index["shards"][-1]["next"] if index["shards"] else 0
    classes = dict.fromkeys(index["classes"])
    progress_bar = bar(total=len(rows), initial=position, desc="shard", unit="row", enabled=progress)
    with tempfile.TemporaryDirectory(prefix=".transcode-", dir=out) as scratch:
        samples = _samples(rows, order, position, transcode, Path(scratch), jobs)
        pending = next(samples, None)
        while pending is not None:
            name = f"{prefix}-{len(index['shards']):06d}.tar"
            written = {"samples": 0, "bytes": 0, "skipped": []}

            def write(handle, written=written) -> None:
                nonlocal pending, position
                with wds.TarWriter(handle, encoder=False, mtime=0) as tar:  # mtime 0: reproducible bytes
                    while pending is not None:
                        at, row, payload = pending
                        if isinstance(payload, dict):  # a row left out
                            written["skipped"].append(payload)
                        else:
                            size = len(payload[1]) + TAR_OVERHEAD + 256
                            if written["samples"] and written["bytes"] + size > shard_size:
                                break  # this sample starts the next shard
                            ext, data = payload
                            meta = {"labels": list(row.labels), "start": row.start, "end": row.end,
                                    "path": _relative(row.path, manifest.parent), "line": row.line}
                            tar.write({"__key__": f"{at:09d}", ext: data,
                                       "json": strict_dumps(meta).encode("utf-8")})
                            written["samples"] += 1
                            written["bytes"] += size
                            classes.update(dict.fromkeys(row.labels))
                        position = at + 1
                        progress_bar.update()
                        pending = next(samples, None)

            atomic_write(out / name, write, what="shard")
            index["skipped"] += written["skipped"]
            if written["samples"]:
                index["shards"].append({"name": name, "samples": written["samples"],
                                        "bytes": (out / name).stat().st_size, "next": position})
                index["samples"] += written["samples"]
                report.written += 1
            else:  # only left-out rows since the last shard: no empty shard, but the position moves on
                (out / name).unlink()
                if index["shards"]:
                    index["shards"][-1]["next"] = position
            index["classes"] = list(classes)
            index["complete"] = pending is None
            write_json(out / INDEX_NAME, index, what="shard index")
    progress_bar.close()
    if not index["complete"]:  # every row was already written by an earlier run, after its last shard
        index["complete"] = True
        write_json(out / INDEX_NAME, index, what="shard index")
    if not index["samples"]:
        raise DataError(f"{manifest}: no row could be sharded ({len(index['skipped'])} left out; "
                        "`mbt data check` lists each file's problem)")
    report.shards, report.samples, report.skipped = len(index["shards"]), index["samples"], index["skipped"]
    report.bytes = sum(s["bytes"] for s in index["shards"])
    return report


def _relative(path: Path, base: Path) -> str:
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(base)).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _skip(row: ManifestRow, kind: str, reason: str) -> dict[str, Any]:
    log.warning("left out: %s (line %d): %s: %s", row.path, row.line, kind, reason)
    return {"path": str(row.path), "line": row.line, "kind": kind, "reason": reason}


def _read_row(row: ManifestRow) -> tuple[str, bytes] | dict[str, Any]:
    try:
        check_file(row.path)  # a missing file, a FIFO or a device is that row's problem, never a hang
        return media_extension(Path(row.path)), Path(row.path).read_bytes()
    except MediaError as e:
        return _skip(row, e.kind, e.reason)
    except OSError as e:
        return _skip(row, "unreadable", f"cannot read the file: {e.strerror or e}")


def _samples(rows: list[ManifestRow], order: np.ndarray, start: int, transcode: dict[str, Any] | None,
             scratch: Path, jobs: int):
    """(position, row, (ext, bytes) or a left-out record) for the rows from write-order `position` on."""
    if transcode is None:
        for at in range(start, len(rows)):
            row = rows[int(order[at])]
            yield at, row, _read_row(row)
        return
    from mbt.data.parallel import map_with_progress
    from mbt.data.transcode import _transcode_job

    chunk = max(1, jobs) * 4  # transcode a few rows per process at a time: resumable, bounded scratch space
    for first in range(start, len(rows), chunk):
        ats = range(first, min(first + chunk, len(rows)))
        todo = [(Path(rows[int(order[at])].path), scratch / f"{at:09d}.mp4", transcode.get("short_side", 256),
                 transcode.get("gop", 16), transcode.get("fps")) for at in ats]
        results = map_with_progress(_transcode_job, todo, jobs=jobs, desc="transcode", progress=False)
        for at, job, (status, kind, reason) in zip(ats, todo, results):
            row = rows[int(order[at])]
            if status != "done":
                yield at, row, _skip(row, kind, reason)
                continue
            data = job[1].read_bytes()
            with contextlib.suppress(OSError):
                job[1].unlink()
            yield at, row, ("mp4", data)


# ==================================================================== reading the index and the shard names
@dataclass
class ShardSet:
    """The shards a `data.*` source names, in index order, with what streaming needs of the index."""

    source: str
    urls: list[str]  # what WebDataset opens: paths, URLs or `pipe:` commands
    names: list[str]  # the index's shard names, for messages
    counts: list[int]  # samples per shard
    classes: list[str]
    index: str  # where the index was read

    @property
    def samples(self) -> int:
        return sum(self.counts)


def is_url(text: str) -> bool:
    return text.startswith("pipe:") or "://" in text


def is_shard_source(source: str | Path | None) -> bool:
    """Whether a `data.train` / `val` / `test` value names shards rather than a CSV manifest: a folder holding
    `shards.json`, an index file, a `.tar` path / brace pattern / URL / `pipe:` command, or a list file whose first
    entry is one."""
    if not source:
        return False
    text = str(source)
    path = Path(text)
    if is_url(text) or ".tar" in path.name:
        return True
    if path.is_dir():
        return (path / INDEX_NAME).is_file()
    if path.suffix == ".json":
        return True
    if path.is_file() and path.suffix.lower() != ".csv":
        first = next((line.strip() for line in _head_lines(path) if line.strip() and not line.startswith("#")), "")
        return ".tar" in first
    return False


def _head_lines(path: Path, limit: int = 4096) -> list[str]:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def _expand(pattern: str) -> list[str]:
    import braceexpand  # a dependency of webdataset

    return list(braceexpand.braceexpand(pattern))


def shard_name(url: str) -> str:
    """The shard's file name in a path, URL or `pipe:` command (its last `*.tar` word)."""
    found = re.findall(r"[^/\s'\"]+\.tar\b", url)
    return found[-1] if found else url.rsplit("/", 1)[-1]


def _index_beside(pattern: str) -> str:
    """Where the index of shards named by `pattern` lies: the shards' folder, in the same path / URL / command."""
    found = list(re.finditer(r"[^/\s'\"]*\.tar\b", pattern))
    if not found:
        raise ConfigError(f"{pattern}: names no .tar shard")
    last = found[-1]
    return pattern[:last.start()] + INDEX_NAME + pattern[last.end():]


def _read_index(where: str, source: str) -> dict[str, Any]:
    try:
        if is_url(where):
            from webdataset.gopen import gopen

            with gopen(where) as handle:
                text = handle.read().decode("utf-8")
        else:
            text = Path(where).read_text(encoding="utf-8")
        index = json.loads(text)
        if index.get("format") != INDEX_FORMAT:
            raise ValueError(f"format {index.get('format')!r}, expected {INDEX_FORMAT!r}")
        if not isinstance(index["shards"], list) or not all(isinstance(s["samples"], int) for s in index["shards"]):
            raise ValueError("'shards' must list {name, samples}")
    except Exception as e:  # whatever reading or parsing raised: the source cannot be used
        raise ConfigError(f"{source}: cannot read its shard index {where} ({type(e).__name__}: {e}); "
                          "`mbt data shard` writes one beside the shards") from None
    return index


def resolve_shards(source: str | Path) -> ShardSet:
    """The shards a `data.*` source names (see `is_shard_source`) and their sample counts from the index."""
    text = str(source)
    path = Path(text)
    if not is_url(text) and path.is_dir():
        where = str(path / INDEX_NAME)
        index = _read_index(where, text)
        urls = [str(path / s["name"]) for s in index["shards"]]
    elif not is_url(text) and path.suffix == ".json":
        where = text
        index = _read_index(where, text)
        urls = [str(path.parent / s["name"]) for s in index["shards"]]
    elif not is_url(text) and path.is_file() and ".tar" not in path.name:  # a list file, one shard a line
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        urls = [u if is_url(u) or Path(u).is_absolute() else str(path.parent / u)
                for line in lines if line and not line.startswith("#") for u in _expand(line)]
        if not urls:
            raise ConfigError(f"{text}: the shard list names no shard")
        where = _index_beside(urls[0])
        index = _read_index(where, text)
    else:  # a brace pattern, one shard, a URL or a pipe: command
        urls = _expand(text)
        where = _index_beside(urls[0])
        index = _read_index(where, text)
    counts_by_name = {s["name"]: s["samples"] for s in index["shards"]}
    names, counts = [], []
    for url in urls:
        name = shard_name(url)
        if name not in counts_by_name:
            raise ConfigError(f"{text}: shard {name} is not in its index {where} (its sample count is unknown)")
        names.append(name)
        counts.append(counts_by_name[name])
        if not is_url(url) and not Path(url).is_file():
            raise ConfigError(f"{text}: shard {url} does not exist")
    if not urls or not sum(counts):
        raise ConfigError(f"{text}: names no sample (index {where})")
    if not index.get("complete", True):
        log.warning("%s: the shard index says the writing was interrupted: %d of the manifest's rows are in it "
                    "(rerun `mbt data shard` to finish)", text, index.get("samples", 0))
    return ShardSet(text, urls, names, counts, list(index.get("classes", [])), where)
