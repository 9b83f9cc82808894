"""Live progress lines, serial and under pytest-xdist.

Serial: a line goes straight to the terminal reporter (``-q`` silences it). Under xdist a worker has
no terminal: it appends its lines to ``<folder>/<worker>.log`` (the folder lives under pytest's
basetemp and the controller hands it to every worker through ``workerinput``), and a relay thread on
the controller reads the new lines twice a second and prints them, tagged with the worker's id. A
file per worker, appended and flushed line by line, needs no channel beside xdist's own and survives
a worker that dies (its last lines are still shown).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path


def terminal_writer(config) -> Callable[[str], None]:
    """Write one line to pytest's terminal, around output capturing."""

    def write(line: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        capture = config.pluginmanager.get_plugin("capturemanager")
        if capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(line)
        else:
            reporter.write_line(line)

    return write


def file_writer(folder: Path, worker: str) -> Callable[[str], None]:
    """A worker's log: one line per call, flushed at once."""
    path = Path(folder) / f"{worker}.log"

    def write(line: str) -> None:
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        except OSError:
            pass  # progress is a courtesy: a full disk must not fail a build

    return write


class Relay:
    """On the xdist controller: print the workers' new progress lines as they appear."""

    def __init__(self, folder: Path, write: Callable[[str], None], interval: float = 0.5):
        self.folder, self.write, self.interval = Path(folder), write, interval
        self._offsets: dict[Path, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="optcheck-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        with self._lock:
            for path in sorted(self.folder.glob("*.log")):
                start = self._offsets.get(path, 0)
                try:
                    with open(path, "rb") as fh:
                        fh.seek(start)
                        chunk = fh.read()
                except OSError:
                    continue
                complete = chunk[: chunk.rfind(b"\n") + 1]  # whole lines only
                self._offsets[path] = start + len(complete)
                for line in complete.decode("utf-8", "replace").splitlines():
                    self.write(f"[optcheck {path.stem}] {line}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.poll()  # what the workers wrote last


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
