"""What happened to each stage of a run, as the reports show it: how it was obtained (built, a cache
hit, rebuilt, cache off), its key, its own seconds (less the time its build spent obtaining its
parent), the seconds spent waiting for another process's lock, and the thread count it was built with."""

from __future__ import annotations

import time
from typing import Any


class Events:
    def __init__(self) -> None:
        self.stages: dict[str, dict[str, Any]] = {}
        self._upstream: dict[str, float] = {}

    def upstream(self, stage: str, seconds: float) -> None:
        """``stage``'s build spent ``seconds`` obtaining the stage it is built from: not its own time."""
        self._upstream[stage] = self._upstream.get(stage, 0.0) + seconds

    def record(self, stage: str, started: float, **fields: Any) -> None:
        """``stage`` was obtained (``fields``: cache, key, waited, threads) after starting at ``started``."""
        own = time.perf_counter() - started - self._upstream.pop(stage, 0.0)
        self.stages[stage] = {**fields, "seconds": own}

    def update(self, stage: str, **fields: Any) -> None:
        self.stages[stage] = {**self.stages.get(stage, {}), **fields}

    def get(self, stage: str, default: Any = None) -> Any:
        return self.stages.get(stage, default)
