"""Progress of a training run: a tqdm bar in a terminal; elsewhere (a log file, a batch job, CI) a plain line every
`train.log_every` steps, because a bar's carriage returns make one unreadable line there."""

from __future__ import annotations

import logging
import time

from mbt.bars import in_terminal

log = logging.getLogger("mbt.train")


def use_bar(progress: bool, is_main: bool) -> bool:
    return progress and is_main and in_terminal()


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class ProgressLines:
    """Logs `epoch e/E step s/S (p%): loss, lr, steps/s, clips/s, ETA` every `every` steps (rank 0, no bar)."""

    def __init__(self, *, total_steps: int, epochs: int, every: int, enabled: bool, start_step: int):
        self.total_steps, self.epochs, self.every, self.enabled = total_steps, epochs, every, enabled
        self.start_step, self.started = start_step, time.time()

    def step(self, record: dict) -> None:
        step = record["step"]
        if not self.enabled or (step % self.every and step != self.total_steps):
            return
        elapsed = max(time.time() - self.started, 1e-9)
        rate = (step - self.start_step) / elapsed
        eta = (self.total_steps - step) / rate if rate > 0 else float("inf")
        loss = "-" if record.get("loss") is None else f"{record['loss']:.4f}"
        log.info("epoch %d/%d step %d/%d (%.0f%%): loss %s, lr %.3g, %.2f steps/s, %.1f clips/s, ETA %s",
                 record["epoch"], self.epochs, step, self.total_steps, 100 * step / max(self.total_steps, 1), loss,
                 record["lr"], rate, record.get("clips_per_s", 0.0), _duration(eta) if rate > 0 else "?")
