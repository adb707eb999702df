"""One way to map a function over many files in worker processes, with a progress bar (check, stats,
transcode, the demo set)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import TypeVar

from mbt.bars import bar as progress_bar

log = logging.getLogger("mbt.data")
T = TypeVar("T")
R = TypeVar("R")


def _worker_init() -> None:
    # each process works on one file at a time; more threads per process would only oversubscribe the cores
    import torch

    torch.set_num_threads(1)


def map_with_progress(fn: Callable[[T], R], items: Sequence[T], *, jobs: int, desc: str,
                      progress: bool = True, unit: str = "file") -> list[R]:
    """[fn(item) for item in items] with a progress bar, in `jobs` processes when jobs > 1 (results in order).

    Processes are spawned, not forked: a forked child of a process whose torch already started threads can hang.
    `fn` must be picklable (a module-level function, or a functools.partial of one).
    """
    bar = progress_bar(total=len(items), desc=desc, unit=unit, enabled=progress)
    lines = progress and bar.disable and len(items) >= 20  # no terminal: a log line every tenth instead
    results: list[R] = []

    def advance(result: R) -> None:
        results.append(result)
        bar.update()
        if lines and len(results) * 10 // len(items) > (len(results) - 1) * 10 // len(items):
            log.info("%s: %d/%d %ss (%d%%)", desc, len(results), len(items), unit, 100 * len(results) // len(items))

    try:
        if jobs <= 1 or len(items) <= 1:
            for item in items:
                advance(fn(item))
            return results
        with ProcessPoolExecutor(max_workers=min(jobs, len(items)), mp_context=get_context("spawn"),
                                 initializer=_worker_init) as pool:
            for result in pool.map(fn, items, chunksize=max(1, len(items) // (jobs * 32))):
                advance(result)
            return results
    finally:
        bar.close()
