"""Builds the demo set (its tasks: `mbt.data.demo.tasks`) as real mp4 files with manifests, deterministically
and in parallel; a complete earlier build with the same parameters is reused."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from mbt.data.demo.tasks import (
    META_FIELDS,
    SPLITS,
    ClipPlan,
    DemoFormat,
    check_format,
    check_variant,
    class_names,
    draw_clip,
    plan_split,
)
from mbt.data.manifest import ManifestRow, write_classes, write_manifest
from mbt.data.parallel import map_with_progress
from mbt.fileio import dumps as strict_dumps
from mbt.fileio import write_json
from mbt.media.encode import write_mp4

GENERATOR_VERSION = 1


MARKER = ".complete.json"


@dataclass
class DemoSet:
    root: Path  # the variant's folder, `root/<variant>` of `build_demo_set`
    classes: Path
    train: Path
    val: Path
    test: Path
    class_names: list[str]
    variant: str
    meta: Path  # per-clip ground truth (see the module docstring)


def build_demo_set(root: str | Path, *, variant: str = "fusion", num_train: int = 480, num_val: int = 120,
                   num_test: int = 120, seconds: float = 4.0, fps: int = 8, size: int = 64, sample_rate: int = 16000,
                   seed: int = 0, jobs: int = 2, progress: bool = True) -> DemoSet:
    """Write the demo set under `root/<variant>` (see the module docstring) and return its paths.

    A complete earlier build with the same parameters is reused as it is; anything else there is rebuilt.
    """
    check_variant(variant)
    counts = {"train": num_train, "val": num_val, "test": num_test}
    fmt = DemoFormat(variant, float(seconds), int(fps), int(size), int(sample_rate), int(seed))
    check_format(fmt, counts)
    folder = Path(root) / variant
    names = class_names(variant)
    demo = DemoSet(folder, folder / "classes.txt", folder / "train.csv", folder / "val.csv", folder / "test.csv",
                   names, variant, folder / "meta.csv")
    params = {"version": GENERATOR_VERSION, **vars(fmt), **counts}
    digest = hashlib.sha256(strict_dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    plans = [plan for split in SPLITS for plan in plan_split(fmt, split, counts[split])]
    media = {plan: folder / "media" / f"{plan.split}_{plan.index:05d}.mp4" for plan in plans}
    if _is_complete(folder, digest, media.values()):
        return demo

    (folder / MARKER).unlink(missing_ok=True)  # from here on the folder is incomplete until the marker is back
    (folder / "media").mkdir(parents=True, exist_ok=True)
    tasks = [(fmt, plan, media[plan]) for plan in plans]
    rows = map_with_progress(_make_clip, tasks, jobs=jobs, desc=f"demo set ({variant})", progress=progress,
                             unit="clip")
    meta = dict(zip(plans, rows))

    write_classes(demo.classes, names)
    for split in SPLITS:
        rows = [ManifestRow(media[p], (names[p.label],)) for p in plans if p.split == split]
        write_manifest(getattr(demo, split), rows)
    with demo.meta.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=META_FIELDS)
        writer.writeheader()
        for plan in plans:
            writer.writerow({"split": plan.split, "path": media[plan].relative_to(folder).as_posix(),
                             "label": names[plan.label], **meta[plan]})
    # Clips of an earlier, larger build are not part of this one: they would only confuse a directory listing.
    wanted = set(media.values())
    for stale in (folder / "media").glob("*.mp4"):
        if stale not in wanted:
            stale.unlink()
    write_json(folder / MARKER, {"hash": digest, "params": params}, what="demo set marker")
    return demo


def _is_complete(folder: Path, digest: str, media) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = [folder / n for n in ("classes.txt", "train.csv", "val.csv", "test.csv", "meta.csv")] + list(media)
    return marker.get("hash") == digest and all(f.is_file() for f in files)


def _make_clip(task: tuple[DemoFormat, ClipPlan, Path]) -> dict[str, str]:
    """Draw, encode and write one clip; returns its meta.csv fields (besides split, path and label)."""
    fmt, plan, path = task
    frames, audio, meta = draw_clip(fmt, plan)
    tmp = path.with_name(path.stem + ".tmp.mp4")
    write_mp4(tmp, frames, audio, fmt.fps, fmt.sample_rate)
    os.replace(tmp, path)  # a clip is either complete or absent, never half-written
    return meta
