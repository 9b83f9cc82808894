"""A zoo model's results as plain data, and their verdicts against the known failures."""

from __future__ import annotations

from optcheck.core.jsonsafe import jsonsafe

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from optcheck.recipes.zoo_phases import ALL_PHASES
from optcheck.recipes.zoo import ModelCase

PASSED, FAILED, NOT_RUN = "passed", "failed", "not run"
XFAILED, XPASSED = "xfailed", "xpassed"
MESSAGE_LIMIT = 500


@dataclass(frozen=True)
class KnownFailure:
    """``model`` (a case's name, or its label: ``squeezenet1_0`` for ``torchvision:squeezenet1_0``) is
    expected to fail at ``phase``; ``match`` (a regex searched in "Type: message") narrows it to one
    failure, so that another failure at the same phase stays a failure."""

    model: str
    phase: str
    ticket: str
    reason: str
    match: str | None = None

    def __post_init__(self) -> None:
        if self.phase not in ALL_PHASES:
            raise ValueError(f"known failure of {self.model}: unknown phase {self.phase!r} "
                             f"(phases: {', '.join(ALL_PHASES)})")

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "phase": self.phase, "ticket": self.ticket, "reason": self.reason,
                "match": self.match}


# -- results -----------------------------------------------------------------------------------------

@dataclass
class PhaseResult:
    phase: str
    status: str  # passed | failed | not run
    seconds: float = 0.0
    error_type: str = ""
    message: str = ""
    hint: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> str:
        """``Type: message`` of a failed phase; the "not run (after ...)" note of a skipped one."""
        if self.status == FAILED:
            return f"{self.error_type}: {self.message}" if self.message else self.error_type
        return self.message

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"phase": self.phase, "status": self.status, "seconds": round(self.seconds, 3)}
        if self.error_type:
            out["error_type"] = self.error_type
        if self.message:
            out["message"] = self.message
        if self.hint:
            out["hint"] = self.hint
        if self.details:
            out["details"] = jsonsafe(self.details, finite=True)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PhaseResult":
        return cls(d["phase"], d["status"], float(d.get("seconds", 0.0)), d.get("error_type", ""),
                   d.get("message", ""), d.get("hint", ""), dict(d.get("details", {})))


@dataclass
class ModelResult:
    case: ModelCase
    phases: list[PhaseResult]
    seconds: float
    seed: int = 0
    versions: dict[str, str | None] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.case.name

    def phase(self, name: str) -> PhaseResult | None:
        return next((p for p in self.phases if p.phase == name), None)

    @property
    def failed_phase(self) -> str | None:
        return next((p.phase for p in self.phases if p.status == FAILED), None)

    @property
    def passed(self) -> bool:
        return all(p.status == PASSED for p in self.phases)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.case.name, "case": self.case.as_dict(), "seed": self.seed,
                "seconds": round(self.seconds, 3), "passed": self.passed, "failed_phase": self.failed_phase,
                "phases": [p.as_dict() for p in self.phases], "versions": dict(self.versions)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelResult":
        """The inverse of ``as_dict`` (a result kept in the cache, or read from a JSON report)."""
        return cls(ModelCase(**d["case"]), [PhaseResult.from_dict(p) for p in d["phases"]], float(d["seconds"]),
                   int(d.get("seed", 0)), dict(d.get("versions", {})))


_BOX = re.compile(r"[\u2500-\u257f]")  # box drawing: modelopt's profiling tables (rich)


def trim_message(exc: BaseException, limit: int = MESSAGE_LIMIT) -> str:
    """The exception's message on one line: its lines joined with " | ", tables' borders dropped (their
    cells kept), at most ``limit`` chars; a longer one keeps its last line (often the verdict)."""
    lines = [" ".join(_BOX.sub(" ", line).split()) for line in str(exc).splitlines()]
    lines = [line for line in lines if line.strip("-=_ ")]
    text = " | ".join(lines)
    if len(text) <= limit:
        return text
    last = lines[-1]
    room = limit - len(last) - 5
    if len(lines) > 1 and room >= limit // 2:
        return text[:room].rstrip() + " … | " + last
    return text[: limit - 1].rstrip() + "…"


def versions() -> dict[str, str | None]:
    from optcheck.core.numerics import dist_version

    return {d: dist_version(d, None) for d in ("nvidia-modelopt", "torch", "torchvision", "torchprofile")}


# -- verdicts --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """One (model, phase) cell judged against the known failures."""

    model: str
    phase: str
    outcome: str  # passed | failed | xfailed | xpassed | not run
    message: str = ""
    known: KnownFailure | None = None

    @property
    def ok(self) -> bool:
        """False for a failure nobody expected and for a known failure that passed."""
        return self.outcome not in (FAILED, XPASSED)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "phase": self.phase, "outcome": self.outcome, "ok": self.ok,
                "message": self.message, "known": self.known.as_dict() if self.known else None}


def _names(case: ModelCase) -> tuple[str, str]:
    return case.name, case.label


def _find_known(known: Iterable[KnownFailure], case: ModelCase, phase: str) -> KnownFailure | None:
    return next((k for k in known if k.model in _names(case) and k.phase == phase), None)


def classify(results: Iterable[ModelResult], known: Iterable[KnownFailure] = ()) -> list[Verdict]:
    """Every (model, phase) of ``results`` as passed / failed / xfailed / xpassed / not run.

    A known failure that failed as described (its ``match``, if any, found in "Type: message") is
    ``xfailed``; one that failed otherwise is ``failed`` (another failure than the known one); one that
    passed is ``xpassed``, which is not ``ok``: Model Optimizer fixed it, and the entry must go."""
    known = list(known)
    out: list[Verdict] = []
    for result in results:
        for p in result.phases:
            entry = _find_known(known, result.case, p.phase)
            if p.status == NOT_RUN:
                out.append(Verdict(result.model, p.phase, NOT_RUN, p.message, entry))
            elif entry is None:
                msg = "" if p.status == PASSED else f"{p.error}\n  fix: {p.hint}"
                out.append(Verdict(result.model, p.phase, p.status, msg))
            elif p.status == PASSED:
                out.append(Verdict(result.model, p.phase, XPASSED, (
                    f"{result.model} {p.phase} passed, but it is listed as a known failure ({entry.ticket}: "
                    f"{entry.reason})\n  fix: fixed upstream? remove the known_failure entry for "
                    f"({result.model!r}, {p.phase!r}) and close {entry.ticket}"), entry))
            elif entry.match is not None and not re.search(entry.match, p.error):
                out.append(Verdict(result.model, p.phase, FAILED, (
                    f"{p.error}\n  known failure {entry.ticket} expects /{entry.match}/ here, and this is another "
                    f"failure\n  fix: {p.hint}"), entry))
            else:
                out.append(Verdict(result.model, p.phase, XFAILED,
                                   f"known failure ({entry.ticket}: {entry.reason}): {p.error}", entry))
    return out


def gate_failures(verdicts: Iterable[Verdict]) -> list[Verdict]:
    """The verdicts that fail the gate: unexpected failures and known failures that passed."""
    return [v for v in verdicts if not v.ok]


def stale_known_failures(results: Iterable[ModelResult], known: Iterable[KnownFailure]) -> list[KnownFailure]:
    """Known failures naming a model that none of ``results`` ran (a typo, or a model left out)."""
    models = {name for r in results for name in _names(r.case)}
    return [k for k in known if k.model not in models]


# -- the matrix --------------------------------------------------------------------------------------

CELLS = {PASSED: "✓", FAILED: "✗", XFAILED: "known failure", XPASSED: "✓ (xpass)", NOT_RUN: "–"}


def matrix_markdown(results: Sequence[ModelResult], known: Iterable[KnownFailure] = (), *,
                    title: str | None = None) -> str:
    """A Markdown table, model x phase (✓ passed, ✗ failed, known failure, ✓ (xpass) a known failure
    that passed, – not run), with seconds per model and in total, then one line per failure."""
    results, known = list(results), list(known)
    judged = [(r, {v.phase: v for v in classify([r], known)}) for r in results]
    cols = [p for p in ALL_PHASES if any(r.phase(p) is not None for r in results)]
    lines = [] if title is None else [title, ""]
    lines.append("| model | input | " + " | ".join(cols) + " | seconds |")
    lines.append("|---|---|" + "---|" * len(cols) + "---:|")
    for r, cell in judged:
        cells = [CELLS[cell[p].outcome] if p in cell else "–" for p in cols]
        lines.append(f"| {r.case.label} | {r.case.input_size} | " + " | ".join(cells) + f" | {r.seconds:.1f} |")
    total = sum(r.seconds for r in results)
    lines.append(f"| **total** ({len(results)} models) | | " + " | ".join("" for _ in cols) + f" | {total:.1f} |")
    notes = [(r, v) for r, cell in judged for v in cell.values() if v.outcome in (FAILED, XFAILED, XPASSED)]
    if notes:
        lines.append("")
        for r, v in notes:
            head = {FAILED: "✗", XFAILED: "known failure", XPASSED: "✓ (xpass)"}[v.outcome]
            lines.append(f"- **{r.case.label}** `{v.phase}` {head}: " + v.message.replace("\n  ", " — "))
    return "\n".join(lines)
