"""The artifact cache as the pipeline uses it: one get-or-build path under the cache's lock.

``Store.get_or_build(kind, key, what, build, read=, write=)`` is the only protocol: try to read the
entry without the lock; else take the lock, read again (another process may have built it while we
waited), else build, write and publish. Stages, the built-in datasets' splits and the FastNAS bounds
go through it. An entry that verifies but does not read is quarantined and rebuilt; a full disk
(or any ``OSError`` while storing) keeps what was built for this session and says so. The time spent
on the cache itself (keys, checksums, copies) is counted in ``seconds``: its overhead.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MISSING: Any = object()


@dataclass
class Obtained:
    """What ``get_or_build`` returns: the value, how it was obtained ("hit", "hit (built by another
    process)", "built", "built (not cached)") and the seconds spent waiting for the lock."""

    value: Any
    outcome: str
    waited: float = 0.0


class Store:
    def __init__(self, cache, owner: str, log: Callable[[str], None] = lambda _m: None):
        self.cache = cache  # an ``ArtifactCache``
        self.owner = owner  # who stores (a recipe's name), for messages
        self.log = log
        self.seconds = 0.0

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def read(self, kind: str, key: str, read: Callable[[Any], Any] | None = None) -> Any:
        """``read(entry)`` of the entry, the entry itself without ``read``, or ``MISSING``. An entry that
        does not read is moved to quarantine (never deleted) and reported as missing."""
        with self.timed():
            entry = self.cache.load(kind, key)
        if entry is None or read is None:
            return MISSING if entry is None else entry
        try:
            return read(entry)
        except Exception as exc:  # verified but unreadable: rebuilt by the caller
            self.cache.quarantine(entry.path, f"it could not be loaded ({type(exc).__name__}: {exc})")
            return MISSING

    def get_or_build(self, kind: str, key: str, what: str, build: Callable[[], Any], *,
                     read: Callable[[Any], Any] | None = None,
                     write: Callable[[Any, Path], tuple[dict[str, Path], dict[str, Any]]] | None = None) -> Obtained:
        """The value of entry ``(kind, key)``, or ``build()`` under the lock (at most one builder across
        processes), stored as ``write(value, folder) -> (files, meta)`` (``folder``: a temporary folder
        for files to store, removed after)."""
        value = self.read(kind, key, read)
        if value is not MISSING:
            return Obtained(value, "hit")
        waiting = time.perf_counter()
        with self.cache.lock(kind, key, what):
            waited = time.perf_counter() - waiting
            value = self.read(kind, key, read)
            if value is not MISSING:
                return Obtained(value, "hit (built by another process)", waited)
            value = build()
            folder = Path(tempfile.mkdtemp(prefix="optcheck-store-"))
            try:
                with self.timed():
                    files, meta = write(value, folder) if write is not None else ({}, {"value": value})
                stored = self.put(kind, key, files, meta)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            return Obtained(value, "built" if stored else "built (not cached)", waited)

    def put(self, kind: str, key: str, files: dict[str, Path], meta: dict[str, Any]) -> bool:
        """Store an entry; on a full disk (or an unwritable cache) keep going without it and say what
        could not be cached. Returns whether it was stored."""
        from optcheck.pipeline.cache import CacheWarning

        try:
            with self.timed():
                self.cache.store(kind, key, files, meta)
            return True
        except OSError as exc:
            message = (f"{self.owner}: the {kind} was built but could not be cached ({exc.strerror or exc}; "
                       f"cache dir {self.cache.root}): this session uses it from memory, the next one rebuilds "
                       "it. Free disk space to cache it.")
            self.log(message)
            warnings.warn(CacheWarning(message), stacklevel=3)
            return False

    def put_once(self, kind: str, key: str, meta: dict[str, Any]) -> None:
        """Store a small record unless an entry is there already (another process's, kept): a verdict, a
        zoo model's result. Best effort: a full disk only costs recomputing it next time."""
        with self.timed():
            if self.cache.load(kind, key) is not None:
                return
        self.put(kind, key, {}, meta)
