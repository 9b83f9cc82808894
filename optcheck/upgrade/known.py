"""Known upgrade failures: differences a comparison is expected to show, each with its ticket, held
strictly (as a ledger entry's ``known_failure``): a matching difference does not fail the comparison,
and an entry that applies but matches nothing fails it ("fixed upstream? remove the entry").

    # optcheck-upgrades.toml (beside pyproject.toml; --known FILE picks another)
    [[known_failure]]
    ticket = "#23: INT8 / QAT checkpoints saved by modelopt < 0.46 do not restore under 0.47"
    match = "use_sequential"                  # a regex over where and what: "<recipe> <stage>: <text>"
    candidate = "nvidia-modelopt<0.46"        # optional: applies when the candidate's versions satisfy it
    today = "nvidia-modelopt>=0.47"           # optional: ... and today's these

An entry applies when each of its ``today`` / ``candidate`` specifiers (``name<op>version``, several
joined by ";") holds for that side's installed versions.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optcheck.core.errors import OptcheckError

FILE = "optcheck-upgrades.toml"
TICKET = re.compile(r"([A-Z][A-Z0-9]+-\d+|#\d+|https?://\S+)")
FIELDS = ("ticket", "match", "today", "candidate")


class KnownError(OptcheckError):
    """A known-failures file that cannot be used: names the file, the entry and the fix."""


@dataclass
class Known:
    ticket: str
    match: re.Pattern
    today: list[Any]
    candidate: list[Any]

    def applies(self, today: dict[str, str], candidate: dict[str, str]) -> bool:
        return all(_holds(r, today) for r in self.today) and all(_holds(r, candidate) for r in self.candidate)


def _holds(requirement, versions: dict[str, str]) -> bool:
    from optcheck.upgrade.environment import canonical

    have = versions.get(canonical(requirement.name))
    return have is not None and requirement.specifier.contains(have, prereleases=True)


def load(path: Path) -> list[Known]:
    """The entries of ``path`` (none when it does not exist)."""
    from packaging.requirements import InvalidRequirement, Requirement

    if not path.exists():
        return []
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KnownError(f"{path}: cannot be read ({exc}); fix the TOML") from None
    entries = doc.get("known_failure", [])
    if not isinstance(entries, list) or set(doc) - {"known_failure"}:
        raise KnownError(f"{path}: holds [[known_failure]] tables only; fix: move {sorted(set(doc) - {'known_failure'})} out")
    out = []
    for i, entry in enumerate(entries):
        where = f"{path}: known_failure[{i}]"
        unknown = set(entry) - set(FIELDS)
        if unknown:
            raise KnownError(f"{where}: unknown field(s) {sorted(unknown)}; fix: fields are {', '.join(FIELDS)}")
        if not isinstance(entry.get("ticket"), str) or not TICKET.search(entry["ticket"]):
            raise KnownError(f"{where}.ticket: {entry.get('ticket')!r} names no ticket; fix: write e.g. "
                             "\"#23: why\" or \"GH-123: why\" or a URL")
        try:
            pattern = re.compile(entry["match"])
        except (KeyError, TypeError, re.error) as exc:
            raise KnownError(f"{where}.match: {entry.get('match')!r} is not a regex ({exc}); fix: a regex that the "
                             "difference's text matches, e.g. \"use_sequential\"") from None
        sides = {}
        for side in ("today", "candidate"):
            try:
                sides[side] = [Requirement(r.strip()) for r in str(entry.get(side, "")).split(";") if r.strip()]
            except InvalidRequirement as exc:
                raise KnownError(f"{where}.{side}: {entry[side]!r} ({exc}); fix: e.g. \"nvidia-modelopt<0.46\"") from None
        out.append(Known(entry["ticket"], pattern, sides["today"], sides["candidate"]))
    return out


def classify(reasons: list[dict[str, str]], known: list[Known], today: dict[str, str],
             candidate: dict[str, str]) -> tuple[list[dict[str, str]], list[dict[str, str]], list[str]]:
    """``(unexplained, known, stale)``: the reasons no applicable entry matches, those one does (with
    its ticket), and the applicable entries that matched nothing (each a failure: fixed upstream?)."""
    applicable = [k for k in known if k.applies(today, candidate)]
    used: set[int] = set()
    unexplained, explained = [], []
    for reason in reasons:
        hit = next((i for i, k in enumerate(applicable) if k.match.search(f"{reason['where']}: {reason['text']}")),
                   None)
        if hit is None:
            unexplained.append(reason)
        else:
            used.add(hit)
            explained.append({**reason, "ticket": applicable[hit].ticket})
    stale = [f"known failure {k.ticket!r} no longer shows (its match /{k.match.pattern}/ found no difference): "
             "fixed upstream? remove the entry and close the ticket"
             for i, k in enumerate(applicable) if i not in used]
    return unexplained, explained, stale
