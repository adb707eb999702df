"""What may happen to a run folder: a new run refuses a folder holding one (unless told to overwrite it), and
`--resume` continues only a run whose computation the config leaves unchanged.

Keys that do not change what is computed may differ on `--resume` (they are logged): extending a run (epochs),
checkpoint cadence, workers, logging, evaluation sets and cadence. Any other difference is refused with the keys
listed, because the resumed run would silently be a different one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from mbt.errors import ConfigError, OutputError
from mbt.fileio import describe_os_error

log = logging.getLogger("mbt.train")

RUN_MARKERS = ("train_config.yaml", "metrics.jsonl", "checkpoints", "model.safetensors")
RESUME_SAFE_KEYS = frozenset({
    "train.epochs", "train.checkpoint_every", "train.keep_checkpoints", "train.num_workers",
    "train.eval_every_epochs", "train.test_every_epochs", "train.log_every", "train.max_bad_steps",
    "data.val", "data.test", "data.eval_clips", "data.eval_crops",
})


def holds_run(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).exists() for name in RUN_MARKERS)


def prepare_new_run(folder: Path, *, overwrite: bool, is_main: bool) -> None:
    """Refuse a folder holding a run unless `overwrite`; then the old run is moved aside (nothing is deleted)."""
    if not holds_run(folder):
        return
    if not overwrite:
        raise ConfigError(f"{folder}: holds a run already; --resume continues it, --overwrite starts afresh "
                          "(the old run is moved aside), or choose another --out")
    if not is_main:
        return
    aside = folder.with_name(f"{folder.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        folder.rename(aside)
    except OSError as e:
        raise OutputError(f"{folder}: cannot move the old run aside to {aside}: {describe_os_error(e, folder)}"
                          ) from None
    log.warning("--overwrite: the run that was in %s is now in %s", folder, aside)


def flat_keys(config: dict[str, Any]) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in config.items() if isinstance(values, dict)
            for key, value in values.items()}


def check_resume_config(saved: dict[str, Any] | None, current: dict[str, Any], checkpoint: Path) -> list[str]:
    """The resume-safe keys that changed (to be logged); a ConfigError listing the others when any differs."""
    if not saved:
        log.warning("%s stores no config (an older checkpoint): the config cannot be compared", checkpoint)
        return []
    before, now = flat_keys(saved), flat_keys(current)
    changed = sorted(k for k in before.keys() & now.keys() if before[k] != now[k])
    refused = [k for k in changed if k not in RESUME_SAFE_KEYS]
    if refused:
        shown = ", ".join(f"{k} ({before[k]!r} -> {now[k]!r})" for k in refused[:6])
        more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
        raise ConfigError(f"--resume: the config differs from the run's in keys that change what is computed: "
                          f"{shown}{more}; use the run's config ({checkpoint.parent.parent / 'train_config.yaml'}) "
                          "or train into a new --out")
    accepted = [k for k in changed if k in RESUME_SAFE_KEYS]
    for key in accepted:
        log.info("--resume: %s changed from %r to %r", key, before[key], now[key])
    return accepted
