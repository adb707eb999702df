"""Training-state checkpoints: written atomically (temp file + fsync + rename) with a SHA-256 beside each, the
last K kept, loaded without unpickling code (`weights_only=True`).

A checkpoint `step-N.pt` is trusted only when its digest `step-N.pt.sha256` matches its bytes and it loads: a
truncated, zero-byte or bit-flipped file is skipped with the reason, and `--resume` falls back to the newest one
that verifies. The digest is written before the checkpoint is renamed into place, so a kill at any moment leaves
either the previous checkpoints alone or a complete new one with its digest.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mbt.errors import OutputError
from mbt.fileio import atomic_write, describe_os_error

log = logging.getLogger("mbt.checkpoint")

CHECKPOINT_DIR = "checkpoints"
DIGEST_SUFFIX = ".sha256"
_PATTERN = re.compile(r"step-(\d+)\.pt$")


def checkpoint_path(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / f"step-{step:08d}.pt"


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Checkpoint files of a run, oldest first (verified or not)."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PATTERN.search(p.name))]
    return [p for _, p in sorted(found)]


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def save_checkpoint(out_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    path = checkpoint_path(out_dir, step)
    buffer = io.BytesIO()  # serialised first: its digest is known before a byte reaches the checkpoint's name
    torch.save(state, buffer)
    data = buffer.getbuffer()
    digest = hashlib.sha256(data).hexdigest()
    atomic_write(_digest_path(path), lambda handle: handle.write(f"{digest}  {path.name}\n".encode()),
                 what="checkpoint digest")
    atomic_write(path, lambda handle: handle.write(data), what="checkpoint")
    for old in list_checkpoints(out_dir)[:-keep]:
        try:
            old.unlink(missing_ok=True)
            _digest_path(old).unlink(missing_ok=True)
        except OSError as e:
            raise OutputError(f"{old}: cannot remove an old checkpoint: {describe_os_error(e, old)}") from None
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def verify_checkpoint(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(state, "") for a checkpoint whose bytes match its digest and that loads; (None, why) otherwise."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"
    if not data:
        return None, "empty (0 bytes)"
    digest_file = _digest_path(path)
    if digest_file.is_file():
        expected = digest_file.read_text(encoding="utf-8", errors="replace").split(maxsplit=1)[:1]
        if expected != [hashlib.sha256(data).hexdigest()]:
            return None, "its bytes do not match its SHA-256 (truncated or damaged)"
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # any damage makes the unpickler fail in its own way
        return None, f"does not load ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    if not isinstance(state, dict) or not {"model", "optimizer", "step"} <= set(state):
        return None, "not a training checkpoint"
    bad = [k for k, v in state["model"].items() if torch.is_tensor(v) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        return None, f"non-finite weights in {bad[0]}"
    return state, ""


@dataclass
class Resumable:
    path: Path
    state: dict[str, Any]
    skipped: list[tuple[Path, str]]  # newer checkpoints that did not verify, and why


def newest_verified(out_dir: Path) -> Resumable | None:
    """The newest checkpoint of a run that verifies (see `verify_checkpoint`), or None when none does."""
    skipped = []
    for path in reversed(list_checkpoints(out_dir)):
        state, why = verify_checkpoint(path)
        if state is not None:
            return Resumable(path, state, skipped)
        skipped.append((path, why))
    if skipped:
        for path, why in skipped:
            log.warning("checkpoint %s skipped: %s", path, why)
    return None
