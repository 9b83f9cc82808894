"""The failure message every assertion raises: the budget, rows of measured / limit / ..., a hint."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn



def fail(budget: str, rows: Sequence[tuple[str, str]], hint: str) -> NoReturn:
    __tracebackhide__ = True
    width = max(len(k) for k, _ in rows + [("hint", "")])
    lines = [f"optcheck budget '{budget}' failed"]
    lines += [f"  {k:<{width}} : {v}" for k, v in rows]
    lines.append(f"  {'hint':<{width}} : {hint}")
    raise AssertionError("\n".join(lines))
