"""Content hashes: of JSON-able key material, of files, and of optcheck's own source.

A cache key or a stored verdict holds the hash of the optcheck code that decides its content
(``code_digest``), so editing that code invalidates exactly what it could change: editing a step kind
rebuilds artifacts, editing the report renders nothing again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parents[1]  # optcheck/


def digest(obj: Any) -> str:
    """SHA-256 of ``obj`` as canonical JSON (sorted keys; anything else by its ``str``)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def code_digest(*parts: str) -> str:
    """SHA-256 of optcheck's source: each part a module (``"pipeline/run.py"``) or a sub-package
    (``"steps"``: every module in it), relative to the package, hashed with its path."""
    files: list[Path] = []
    for part in parts:
        target = PACKAGE / part
        files += sorted(target.glob("*.py")) if target.is_dir() else [target]
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(PACKAGE).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()
