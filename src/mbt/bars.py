"""Progress bars only where they can be drawn: in a terminal. Elsewhere (a log file, a batch job, CI) a bar's
carriage returns make one unreadable line, so it is off and the long loops log plain lines instead."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def in_terminal() -> bool:
    return sys.stderr.isatty()


def bar(iterable: Any = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """tqdm(iterable, **kwargs), shown only when `enabled` and stderr is a terminal."""
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not (enabled and in_terminal()), **kwargs)
