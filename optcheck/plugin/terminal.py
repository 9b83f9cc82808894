"""Progress lines on pytest's terminal, serial and under pytest-xdist (a relay of the workers' files)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from optcheck.core.progress import is_tick


class TerminalLines:
    """Progress lines on pytest's terminal, around output capturing.

    On a TTY a tick (``is_tick``) redraws one status line in place (pytest's own ``rewrite``: a carriage
    return, the line, blanks to the width), and the next lasting line (a stage started, built, from
    cache) first wipes it, so a finished run's scrollback holds only the lasting lines. Anywhere else
    (a CI log, a pipe, a file) every line is printed whole: no carriage-return noise."""

    def __init__(self, config) -> None:
        self.config = config
        self._status = False  # a tick is drawn on the current terminal line
        self._lock = threading.Lock()  # the relay thread and the main thread both write

    def __call__(self, line: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        with self._lock:
            if capture is not None:
                with capture.global_and_fixture_disabled():
                    self._write(reporter, line)
            else:
                self._write(reporter, line)

    def _write(self, reporter, line: str) -> None:
        if not reporter.isatty:
            reporter.write_line(line)
            return
        if self._status and reporter.currentfspath is not None:
            self._status = False  # pytest printed results below the status line: it stays in scrollback
        if is_tick(line):
            if not self._status:
                reporter.ensure_newline()  # leave pytest's "path ...." line as it is
            reporter.rewrite(line[: max(20, reporter._tw.fullwidth - 1)], erase=True)
            reporter._tw.flush()
            self._status = True
            return
        if self._status:
            reporter.rewrite("", erase=True)
            reporter.rewrite("")  # the cursor at the start of the wiped line
            self._status = False
            reporter._tw.line(line)
            return
        reporter.write_line(line)


def terminal_writer(config) -> Callable[[str], None]:
    """Write progress lines to pytest's terminal (see ``TerminalLines``): one writer per session, so
    the serial log and the xdist relay share the state of the status line."""
    writer = getattr(config, "_optcheck_terminal_lines", None)
    if writer is None:
        writer = TerminalLines(config)
        config._optcheck_terminal_lines = writer
    return writer


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
