"""The on-disk artifact cache: immutable, checksummed entries under a content key.

Layout under the cache root (default ``.optcheck/cache``)::

    entries/<stage>/<key>/manifest.json   what the entry holds, with a checksum of every file
    entries/<stage>/<key>/<files>         the stage's files (state dicts, mto.save checkpoints)
    locks/<key>.lock, <key>.owner         one builder per key across processes (xdist workers)
    tmp/                                  entries being written; renamed into place when complete
    quarantine/                           corrupted entries, moved aside (never deleted) and reported

An entry appears by one ``os.rename`` of a complete directory, so a reader never sees half an entry
and a process killed mid-write leaves only a folder under ``tmp/`` that is never loaded (and is
swept once its process is gone). Every load verifies sizes and SHA-256 of the files and of the
manifest itself; anything that does not verify is moved to ``quarantine/`` with a ``CacheWarning``
and the caller rebuilds.

This module knows nothing about models: it stores files and JSON. ``pipeline.py`` decides keys and
what to store; ``checkpoints.py`` turns an entry back into an artifact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optcheck.core.errors import OptcheckError
from optcheck.core.hashing import file_digest

FORMAT = 1
MANIFEST = "manifest.json"


class CacheWarning(UserWarning):
    """A cache entry could not be used (it is rebuilt), or the cache could not be used at all."""


class CacheLockTimeout(OptcheckError):
    """Another process held an artifact's lock for longer than the lock timeout."""


@dataclass
class Entry:
    stage: str
    key: str
    path: Path
    files: dict[str, Path]
    meta: dict[str, Any]


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ArtifactCache:
    """Entries keyed by ``(stage, key)``; see the module docstring for the guarantees."""

    def __init__(self, root: Path, *, rebuild: bool = False, session: str = "",
                 lock_timeout: float = 3600.0, log: Callable[[str], None] = lambda _m: None,
                 display_root: str | None = None):
        self.root = Path(root)
        self.rebuild = rebuild
        self.session = session or uuid.uuid4().hex
        self.lock_timeout = lock_timeout
        self.log = log
        self.display_root = display_root or str(self.root)
        for sub in ("entries", "locks", "tmp", "quarantine"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._sweep_tmp()

    @classmethod
    def open(cls, root: Path, **kwargs) -> tuple["ArtifactCache | None", str | None]:
        """The cache at ``root``, or ``(None, why)`` when that directory cannot be written."""
        root = Path(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / f".probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            probe.write_bytes(b"ok")
            probe.unlink()
            return cls(root, **kwargs), None
        except OSError as exc:
            return None, f"{exc.strerror or exc} ({type(exc).__name__})"

    # -- paths -------------------------------------------------------------------------------------
    def entry_dir(self, stage: str, key: str) -> Path:
        return self.root / "entries" / stage / key

    def show(self, path: Path) -> str:
        """``path`` as the user configured the cache root (relative paths stay relative)."""
        try:
            return str(Path(self.display_root) / path.relative_to(self.root))
        except ValueError:
            return str(path)

    # -- load ----------------------------------------------------------------------------------------
    def load(self, stage: str, key: str) -> Entry | None:
        """The verified entry, or ``None`` (missing, stale under ``rebuild``, or corrupt: quarantined)."""
        d = self.entry_dir(stage, key)
        if not d.is_dir():
            return None
        try:
            meta = self._verify(d, stage, key)
        except _Corrupt as bad:
            self.quarantine(d, str(bad))
            return None
        if self.rebuild and meta.get("session") != self.session:
            return None  # --optcheck-rebuild: entries from earlier sessions do not count
        files = {name: d / spec["file"] for name, spec in meta["files"].items()}
        return Entry(stage, key, d, files, meta)

    def _verify(self, d: Path, stage: str, key: str) -> dict[str, Any]:
        try:
            raw = (d / MANIFEST).read_bytes()
        except FileNotFoundError:
            raise _Corrupt(f"{MANIFEST} is missing") from None
        try:
            meta = json.loads(raw)
        except ValueError as exc:
            raise _Corrupt(f"{MANIFEST} is not valid JSON ({exc}); the file is {len(raw)} bytes") from None
        if not isinstance(meta, dict) or "sha256" not in meta:
            raise _Corrupt(f"{MANIFEST} has no checksum")
        claimed = meta.pop("sha256")
        if hashlib.sha256(_canonical(meta)).hexdigest() != claimed:
            raise _Corrupt(f"{MANIFEST} does not match its own checksum")
        if meta.get("format") != FORMAT or meta.get("key") != key or meta.get("stage") != stage:
            raise _Corrupt(f"{MANIFEST} is for another entry or format "
                           f"(format {meta.get('format')}, stage {meta.get('stage')})")
        for name, spec in meta.get("files", {}).items():
            path = d / spec["file"]
            if not path.is_file():
                raise _Corrupt(f"file '{spec['file']}' ({name}) is missing")
            size = path.stat().st_size
            if size != spec["bytes"]:
                raise _Corrupt(f"file '{spec['file']}' is {size} bytes, the manifest says {spec['bytes']} "
                               f"(truncated or overwritten)")
            if file_digest(path) != spec["sha256"]:
                raise _Corrupt(f"file '{spec['file']}' does not match its SHA-256 (corrupted)")
        return meta

    def quarantine(self, d: Path, reason: str) -> Path | None:
        """Move a bad entry aside (its bytes are kept for inspection) and warn."""
        stage, key = d.parent.name, d.name
        dest = self.root / "quarantine" / f"{stage}-{key[:16]}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        try:
            os.rename(d, dest)
        except FileNotFoundError:
            return None  # another process moved it first
        except OSError:
            dest = None
        where = f"moved to {self.show(dest)}" if dest else "could not be moved aside"
        warnings.warn(CacheWarning(
            f"optcheck cache: entry {self.show(d)} ({stage}) is unusable: {reason}; it was {where} "
            f"and will be rebuilt. Nothing corrupt was loaded. Delete the quarantine folder once "
            f"you have looked at it."), stacklevel=2)
        return dest

    # -- store ---------------------------------------------------------------------------------------
    def store(self, stage: str, key: str, files: dict[str, Path], meta: dict[str, Any]) -> Entry:
        """Copy ``files`` into a new entry and publish it atomically. Returns the entry as stored."""
        tmp = self.root / "tmp" / f"{key[:16]}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            specs = {}
            for name, src in files.items():
                src = Path(src)
                target = tmp / f"{name}{''.join(src.suffixes) or '.bin'}"
                shutil.copyfile(src, target)
                _fsync(target)
                specs[name] = {"file": target.name, "bytes": target.stat().st_size, "sha256": file_digest(target)}
            body = {**meta, "format": FORMAT, "stage": stage, "key": key, "session": self.session,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": specs}
            body["sha256"] = hashlib.sha256(_canonical(body)).hexdigest()
            (tmp / MANIFEST).write_bytes(json.dumps(body, indent=1, sort_keys=True).encode())
            _fsync(tmp / MANIFEST)
            _fsync(tmp)
            final = self.entry_dir(stage, key)
            final.parent.mkdir(parents=True, exist_ok=True)
            self._publish(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        body.pop("sha256")
        return Entry(stage, key, final, {n: final / s["file"] for n, s in specs.items()}, body)

    def _publish(self, tmp: Path, final: Path) -> None:
        if final.exists():  # --optcheck-rebuild replaces an older entry (we hold its lock)
            old = self.root / "tmp" / f"old-{final.name[:16]}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
            try:
                os.rename(final, old)
            except FileNotFoundError:
                old = None
            os.rename(tmp, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            return
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # an equal entry was published meanwhile

    def _sweep_tmp(self) -> None:
        """Remove unfinished entries left by processes on this host that no longer run."""
        host = socket.gethostname()
        for d in (self.root / "tmp").iterdir():
            parts = d.name.split(".")
            if len(parts) >= 4 and parts[-3] == host and parts[-2].isdigit() and not _pid_alive(int(parts[-2])):
                shutil.rmtree(d, ignore_errors=True)
            elif d.name.startswith("old-") and parts[-2].isdigit() and not _pid_alive(int(parts[-2])):
                shutil.rmtree(d, ignore_errors=True)

    # -- locks ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, stage: str, key: str, what: str) -> Iterator[None]:
        """Hold the lock for ``key`` across processes; log while waiting, fail after the timeout.

        The lock is an OS file lock (``filelock``): the kernel releases it when its process dies,
        so a killed worker never leaves a lock that blocks; the ``.owner`` file next to it only
        says who holds it, for the waiting and timeout messages.
        """
        from filelock import FileLock, Timeout

        path = self.root / "locks" / f"{key[:32]}.lock"
        owner = path.with_suffix(".owner")
        lock = FileLock(str(path))
        start = time.monotonic()
        while True:
            remaining = self.lock_timeout - (time.monotonic() - start)
            try:
                lock.acquire(timeout=max(0.0, min(30.0, remaining)))
                break
            except Timeout:
                waited = time.monotonic() - start
                holder = self._describe_owner(owner)
                if waited >= self.lock_timeout:
                    raise CacheLockTimeout(
                        f"optcheck cache: waited {waited:.0f} s for the lock {self.show(path)} to build "
                        f"{what}; it is held by {holder}. If no other optcheck run is building it, "
                        f"delete {self.show(path)}; otherwise wait, or raise --optcheck-lock-timeout "
                        f"(now {self.lock_timeout:g} s)") from None
                self.log(f"waiting {waited:.0f} s for {holder} to finish {what}")
        try:
            with contextlib.suppress(OSError):  # informational only: a full disk must not stop the build
                owner.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
            yield
        finally:
            with contextlib.suppress(OSError):
                owner.unlink()
            lock.release()

    def _describe_owner(self, owner: Path) -> str:
        try:
            info = json.loads(owner.read_text())
        except (OSError, ValueError):
            return "another process (no owner file)"
        alive = ""
        if info.get("host") == socket.gethostname():
            alive = ", still running" if _pid_alive(int(info["pid"])) else \
                ", which is no longer running (a child it forked may still hold the lock)"
        return f"pid {info['pid']} on {info.get('host')}{alive}, building {info.get('what')} since {info.get('since')}"


class _Corrupt(Exception):
    pass
