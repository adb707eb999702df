"""The training recipe: a plain loop over the pieces in `mbt.engine.train`. Runs the same under `python`,
`mbt train` and `torchrun`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mbt.bars import bar
from mbt.config import Config
from mbt.engine.progress import ProgressLines, use_bar
from mbt.engine.train import (
    Run,
    close_epoch,
    epoch_loader,
    finish,
    micro_step,
    optimizer_step,
    restore,
    save_state,
    scheduled_test,
    setup_run,
    validate,
)


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per evaluation
    skipped: int = 0
    seconds: float = 0.0
    clips_per_second: float = 0.0


def train(cfg: Config, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, stop_after_steps: int | None = None) -> TrainResult:
    """Train `cfg` into `out_dir`, which ends up a `from_pretrained` directory plus `checkpoints/`.

    A folder that holds a run is refused unless `resume` (continue it) or `overwrite` (move it aside).
    `stop_after_steps` ends the run early, after a checkpoint, as an interruption would (tests use it).
    """
    run = setup_run(cfg, out_dir, resume=resume, overwrite=overwrite, progress=progress)
    try:
        return _loop(run, stop_after_steps)
    finally:
        if run.log_file is not None:  # also when the run fails: its last lines are in train.log
            run.log_file.close()


def _loop(run: Run, stop_after_steps: int | None) -> TrainResult:
    tc = run.cfg.train
    state = restore(run)
    started, clips_seen, stopped_early = time.time(), 0, False
    bar_on = use_bar(run.progress, run.info.is_main)
    lines = ProgressLines(total_steps=run.total_steps, epochs=tc.epochs, every=tc.log_every,
                          enabled=run.info.is_main and not bar_on, start_step=state.step)
    for epoch in range(state.epoch, tc.epochs):
        first = state.batch_in_epoch if epoch == state.epoch else 0
        state.epoch = epoch
        loader, num_batches = epoch_loader(run, epoch, first)
        run.model.train()
        epoch_bar = bar(loader, enabled=bar_on, total=num_batches - first, desc=f"epoch {epoch + 1}/{tc.epochs}",
                        leave=False)
        for batch_index, batch in enumerate(epoch_bar, start=first):
            last_micro = (batch_index + 1) % tc.grad_accum == 0
            clips_seen += micro_step(run, batch, state, sync=last_micro)
            if not last_micro:
                continue
            state.batch_in_epoch = batch_index + 1
            record = optimizer_step(run, state)
            if record is None:  # no usable clip, or a non-finite loss: no update
                continue
            record["clips_per_s"] = clips_seen / max(time.time() - started, 1e-9)
            run.metrics_log.write(record)
            lines.step(record)
            epoch_bar.set_postfix(loss=f"{record['loss']:.4f}" if record["loss"] is not None else "-",
                            clips_s=f"{record['clips_per_s']:.1f}")
            end_of_epoch = batch_index == num_batches - 1
            if state.step % tc.checkpoint_every == 0 and not end_of_epoch:
                save_state(run, state)
            if stop_after_steps is not None and state.step >= stop_after_steps:
                stopped_early = True
                break
        epoch_bar.close()
        if stopped_early:
            save_state(run, state)
            break
        close_epoch(run, state)
        if run.val_dataset is not None and ((epoch + 1) % tc.eval_every_epochs == 0 or epoch + 1 == tc.epochs):
            validate(run, state)
        scheduled_test(run, state)
        state.epoch, state.batch_in_epoch = epoch + 1, 0
        save_state(run, state)
    finish(run, state, save_model=not stopped_early)
    seconds = time.time() - started
    return TrainResult(run.out_dir, state.step, state.history, state.skipped, seconds,
                       clips_seen / max(seconds, 1e-9))
