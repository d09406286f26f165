"""Progress of long research runs: a tqdm bar on a terminal, plain periodic log lines otherwise.

A bar redraws itself with carriage returns and ANSI codes; in a log file or a CI console those become
thousands of control characters. So bars are drawn only when stderr is a terminal; otherwise the same
loop logs one ``INFO`` line when it starts, then at most every :data:`LOG_EVERY_S` seconds, and at the end.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
LOG_EVERY_S = 30.0


def on_terminal() -> bool:
    """True when stderr is an interactive terminal (where a progress bar is wanted)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def progress(items: Iterable[T], desc: str, *, enabled: bool = True, total: int | None = None,
             leave: bool = False) -> Iterator[T]:  # fmt: skip
    """Iterate ``items`` showing progress: a bar on a terminal, periodic log lines elsewhere, nothing when
    ``enabled`` is false."""
    if not enabled:
        yield from items
        return
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if on_terminal():
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, total=total, leave=leave)
        return
    started = last = time.monotonic()
    of = f"/{total}" if total is not None else ""
    logger.info("%s: started (%s items)", desc, total if total is not None else "?")
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= LOG_EVERY_S:
            logger.info("%s: %d%s done, %.0f s", desc, done, of, now - started)
            last = now
    logger.info("%s: %d%s done in %.0f s", desc, done, of, time.monotonic() - started)
