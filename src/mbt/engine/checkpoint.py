"""Training-state checkpoints: written atomically (temp file + rename), the last K kept, loaded without unpickling
code (`weights_only=True`)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_DIR = "checkpoints"
_PATTERN = re.compile(r"step-(\d+)\.pt$")


def checkpoint_path(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / f"step-{step:08d}.pt"


def list_checkpoints(out_dir: Path) -> list[Path]:
    folder = Path(out_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PATTERN.search(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(out_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    path = checkpoint_path(out_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as handle:  # the bytes reach the disk before the rename makes them the checkpoint
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    for old in list_checkpoints(out_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)
