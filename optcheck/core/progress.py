"""Live progress lines, serial and under pytest-xdist.

Serial: a line goes straight to the terminal reporter (``-q`` silences it). Under xdist a worker has
no terminal: it appends its lines to ``<folder>/<worker>.log`` (the folder lives under pytest's
basetemp and the controller hands it to every worker through ``workerinput``), and a relay thread on
the controller reads the new lines twice a second and prints them, tagged with the worker's id. A
file per worker, appended and flushed line by line, needs no channel beside xdist's own and survives
a worker that dies (its last lines are still shown).
"""

from __future__ import annotations

import re
import time


# Lines that report a unit of work inside a stage (an epoch, a batch of FastNAS scores, a
# Torch-Pruning step): on a terminal each one replaces the last; in a log each is a line of its own.
# Recognized by their text because under xdist they reach the controller as text (see Relay).
TICK = re.compile(r"(: epoch \d+/\d+ |^fastnas: scored \d+ subnets|^torch_pruning step \d+/\d+)")


def is_tick(line: str) -> bool:
    """Whether a progress line (with or without its ``[optcheck gw0]`` tag) reports one unit of work."""
    return bool(TICK.search(line.split("] ", 1)[-1]))


def eta(done: int, total: int, elapsed: float) -> str:
    """``"ETA 42 s"`` once one unit is done; empty before."""
    if done <= 0 or total <= done:
        return ""
    left = elapsed / done * (total - done)
    return f"ETA {left:.0f} s" if left < 120 else f"ETA {left / 60:.1f} min"


class Clock:
    """Elapsed time since creation."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
