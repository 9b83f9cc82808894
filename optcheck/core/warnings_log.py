"""The warnings a stage's build raised, as plain data kept with the artifact (and its cache entry).

An upgrade announces itself in warnings before it breaks anything: a deprecation in Model Optimizer,
a changed default in torch. ``recording()`` collects every warning raised inside it, library noise
included (``core.quiet``), deduplicated with a count; ``replay()`` shows the user the ones that are not
library noise, as if they had not been recorded. The upgrade diff compares the recorded lists of two
environments, so a warning new in the candidate is named, even when the stage came from the cache.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from typing import Any

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
_PATH = re.compile(r"(?:/[^\s/:'\"(),]+){2,}/([^\s/:'\"(),]+)")


def normalized(message: str) -> str:
    """The first line, memory addresses and absolute paths (but their last part) replaced: the same
    warning reads the same in two processes and two working folders."""
    first = str(message).strip().splitlines()[0] if str(message).strip() else ""
    return _PATH.sub(r"…/\1", _ADDRESS.sub("0x…", first))[:300]


@contextlib.contextmanager
def recording() -> Iterator[list[warnings.WarningMessage]]:
    """Record every warning raised inside (none is shown while recording)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def summary(caught: list[warnings.WarningMessage]) -> list[dict[str, Any]]:
    """``[{category, message, module, count}]``, one per distinct warning, in first-seen order."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for w in caught:
        module = getattr(w, "filename", "") or ""
        module = re.sub(r".*/site-packages/", "", module).removesuffix(".py").replace("/", ".")
        key = (w.category.__name__, normalized(str(w.message)), module)
        if key in out:
            out[key]["count"] += 1
        else:
            out[key] = {"category": key[0], "message": key[1], "module": key[2], "count": 1}
    return list(out.values())


def replay(caught: list[warnings.WarningMessage]) -> None:
    """Raise each distinct recorded warning again, through the filters now in force (so library noise
    stays hidden and the user's pytest filters apply)."""
    seen: set[tuple[type, str]] = set()
    for w in caught:
        key = (w.category, str(w.message))
        if key in seen:
            continue
        seen.add(key)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
