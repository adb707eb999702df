"""One way to map a function over many files in worker processes, with a progress bar (check, stats,
transcode, the demo set)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import TypeVar

from tqdm import tqdm

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
    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=not progress, dynamic_ncols=True)
    try:
        if jobs <= 1 or len(items) <= 1:
            results = []
            for item in items:
                results.append(fn(item))
                bar.update()
            return results
        with ProcessPoolExecutor(max_workers=min(jobs, len(items)), mp_context=get_context("spawn"),
                                 initializer=_worker_init) as pool:
            results = []
            for result in pool.map(fn, items, chunksize=max(1, len(items) // (jobs * 32))):
                results.append(result)
                bar.update()
            return results
    finally:
        bar.close()
