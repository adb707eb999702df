"""Writing outputs safely: atomic replacement (a reader sees the old file or the new one, never half of one),
strict JSON (no NaN: a missing value is null), and failures as one `OutputError` naming the path and the cause."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from mbt.errors import OutputError

_CAUSES = {errno.ENOSPC: "no space left on the device", errno.EROFS: "read-only file system",
           errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
           errno.EISDIR: "is a directory", errno.ENOTDIR: "a part of the path is not a directory",
           errno.EDQUOT: "disk quota exceeded", errno.ENAMETOOLONG: "file name too long"}
LOW_SPACE_BYTES = 64 * 2**20  # a failed write with less free than this is put down to a full disk


def describe_os_error(error: BaseException, path: Path) -> str:
    """A short cause for a failed write: errno's meaning, else 'no space left' when the disk is (nearly) full."""
    code = getattr(error, "errno", None)
    if code in _CAUSES:
        return _CAUSES[code]
    try:
        if shutil.disk_usage(_existing_parent(path)).free < LOW_SPACE_BYTES:
            return "no space left on the device"
    except OSError:
        pass
    lines = str(error).strip().splitlines()
    return getattr(error, "strerror", None) or (lines[-1] if lines else type(error).__name__)


def _existing_parent(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path if path.is_dir() else path.parent


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], *, what: str = "file") -> Path:
    """Write `path` through a temporary file in its folder, flushed to disk, then renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise OutputError(f"{path}: cannot write the {what}: {describe_os_error(e, path)}") from None
    return path


def strict(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (JSON null), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return strict(value.item())
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """Strict JSON: non-finite floats become null; anything else non-JSON is an error, not a silent string."""
    return json.dumps(strict(value), allow_nan=False, **kwargs)


def write_json(path: str | Path, value: Any, *, what: str = "JSON file", indent: int | None = 1) -> Path:
    text = dumps(value, indent=indent) + "\n"
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")), what=what)


def write_text(path: str | Path, text: str, *, what: str = "file") -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")), what=what)


def check_writable_file(path: str | Path, *, what: str = "output") -> Path:
    """Fail now, before any work, when `path` cannot be written: a directory, or a folder that cannot take it."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: cannot write the {what}: is a directory")
    folder = _existing_parent(path.parent if path.parent != Path("") else Path("."))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write the {what}: {folder} is not writable")
    return path


def check_writable_dir(path: str | Path, *, what: str = "output folder") -> Path:
    """Create `path` (a folder) if needed; fail with one line when it is a file or cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: cannot use it as the {what}: it is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".mbt-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"{path}: cannot write the {what}: {describe_os_error(e, path)}") from None
    return path
