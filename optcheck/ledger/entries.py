"""The regression ledger: a committed TOML file of accepted metrics per recipe, platform and stage.

    [digits_resnet20_fastnas.cpu.pruned]
    test_acc = 0.986111
    flops = 37160320
    params = 71130
    ckpt_bytes = 336871
    tolerance = { test_acc = 0.0111, flops = 0.17, params = 0.61, ckpt_bytes = 0.6 }
    observed = { test_acc = [0.980556, 0.991667], flops = [33554432, 40404352], ... }
    calibration = "8 runs on 2026-11-21: seeds 0-1 x kernels default/avx2 x threads 1/2; ..."
    written_by = { cpu = "...", capability = "AVX512", isa = "...", threads = 1, torch = "...", ... }
    structure = { quant_input = 0, ..., modes = "fastnas export_nas" }  # build.structure: exact
    known_failure = "GH-42: ..."  # optional: the check xfails with this reason

    [torchvision_zoo.cpu.squeezenet1_0]   # a zoo recipe's model (recipes/zoo.py): no metrics, a known failure
    known_failure = "#10: Model Optimizer 0.47 splits a concatenation's width ..."
    phase = "restore"                     # the phase that fails; its item xfails (strict)
    match = "Inconsistent keys in config" # optional: a regex the failure must match, else it is another failure

The ledger detects *drift* from accepted values; budgets are the contracts. Its tolerances come
from measured variation (``--optcheck-calibrate``: ``calibrate.py``), never from an assumption of
bit-exactness: ``tolerance.test_acc`` is absolute (a fraction), the others are relative to the
entry's value, and a check passes when ``|measured - value| <= tolerance`` in both directions (an
improvement is a mismatch too, so the reference moves on purpose). Exact (tolerance 0) only where
exactness holds on any machine: the FLOPs and params of a stage whose architecture the recipe alone
decides (the baseline). ``observed`` is the calibration's range, ``written_by`` the numerics
fingerprint (``numerics.py``) of the run that wrote the values; both appear in a failure message.
Entries written before calibration existed (``accuracy_tolerance`` / ``bytes_tolerance``) still
load; their FLOPs and params are judged with the recipe's ``[ledger]`` defaults (exact only for a
fixed-architecture stage, ``architecture_tolerance`` for a searched one), because exactness there was
the false alarm this format caused. Times are never gated.

``structure`` holds the stage's structural facts (``build.structure``: enabled quantizers, bit-widths,
calibrated scales, sparse masks, Model Optimizer modes, ONNX Q/DQ nodes) exactly: no tolerance and no
calibration, because none of them moves with numerics; an upgrade that moves one fails the check.

Reading validates everything and names the line of any problem (``LedgerError``). Writing
(``ledger.writing``) happens once per session, in one process (the xdist controller).
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optcheck.core.errors import OptcheckError

PLATFORMS = ("cpu", "cuda")
STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a stage name, as recipes allow it
METRICS = ("test_acc", "flops", "params", "ckpt_bytes")
FIELDS = (*METRICS, "structure", "tolerance", "observed", "calibration", "written_by", "accuracy_tolerance",
          "bytes_tolerance", "known_failure")
STRUCTURE = "structure"  # build.structure's facts: held exactly (no tolerance, not calibrated)
ZOO_FIELDS = ("known_failure", "phase", "match")  # a zoo model's entry
LEGACY_TOLERANCE = {"accuracy_tolerance": "test_acc", "bytes_tolerance": "ckpt_bytes"}
TICKET = re.compile(r"([A-Z][A-Z0-9]+-\d+|#\d+|https?://\S+)")


class LedgerError(OptcheckError):
    def __init__(self, path: str, line: int | None, message: str, fix: str):
        self.path, self.line, self.message, self.fix = path, line, message, fix
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}\n  fix: {fix}\n  (the ledger file was not changed)")


@dataclass
class Mismatch:
    metric: str
    measured: float
    reference: float | None
    rule: str
    observed: list | None = None  # the calibration's [min, max], if calibrated

    def render(self) -> str:
        if self.metric.startswith(f"{STRUCTURE}."):  # a structural fact: exact, any JSON scalar
            return f"{self.metric}: {self.measured!r} now, {self.reference!r} in the ledger ({self.rule})"
        if self.reference is None and self.metric == STRUCTURE:
            return f"{STRUCTURE}: {self.rule}"
        if self.reference is None:  # a team metric the entry does not hold yet
            return f"{self.metric}: {self.measured:.6g} now; {self.rule}"
        if self.metric not in METRICS:  # a team metric: absolute, in its own units
            seen = f"; calibration saw {self.observed[0]:.6g}..{self.observed[1]:.6g}" if self.observed else ""
            return (f"{self.metric}: {self.measured:.6g} now, {self.reference:.6g} in the ledger "
                    f"({self.measured - self.reference:+.4g}; {self.rule}{seen})")
        if self.metric == "test_acc":
            delta = f"{(self.measured - self.reference) * 100:+.2f} pp"
            seen = (f"; calibration saw {self.observed[0] * 100:.2f}..{self.observed[1] * 100:.2f}%"
                    if self.observed else "")
            return (f"test_acc: {self.measured * 100:.2f}% now, {self.reference * 100:.2f}% in the ledger "
                    f"({delta}; {self.rule}{seen})")
        rel = (self.measured - self.reference) / self.reference * 100 if self.reference else math.inf
        seen = f"; calibration saw {self.observed[0]:,}..{self.observed[1]:,}" if self.observed else ""
        return (f"{self.metric}: {self.measured:,} now, {self.reference:,} in the ledger "
                f"({rel:+.2f}%; {self.rule}{seen})")


@dataclass
class Ledger:
    path: Path
    display: str
    entries: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    exists: bool = False

    def entry(self, recipe: str, platform: str, stage: str) -> dict[str, Any] | None:
        return self.entries.get((recipe, platform, stage))


def load_ledger(path: Path, known_recipes: set[str] | dict[str, set[str] | None] | None = None,
                display: str | None = None, metrics: dict[str, set[str]] | None = None) -> Ledger:
    """Read and validate the ledger; a missing file is an empty ledger. Raises ``LedgerError``.
    ``metrics``: each recipe's team metric names (``[[metrics]]``), fields its entries may hold."""
    display = display or str(path)
    if not path.exists():
        return Ledger(path, display)
    text = path.read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise LedgerError(display, int(m.group(1)) if m else None, f"not valid TOML: {exc}",
                          "fix the syntax at that line (the file is TOML, like pyproject.toml)") from None
    ledger = Ledger(path, display, exists=True)
    for recipe, platforms in raw.items():
        if known_recipes is not None and recipe not in known_recipes:
            near = sorted(known_recipes)
            raise LedgerError(display, _line(text, [recipe]), f"unknown recipe '{recipe}'",
                              f"rename the table to one of the recipes ({', '.join(near) or 'none found'}), "
                              f"or delete its entries if the recipe is gone")
        _expect_table(platforms, display, text, [recipe], "platforms (cpu, cuda)")
        for platform, stages in platforms.items():
            if platform not in PLATFORMS:
                raise LedgerError(display, _line(text, [recipe, platform]), f"unknown platform '{platform}' "
                                  f"under '{recipe}'", f"use one of {', '.join(PLATFORMS)}")
            _expect_table(stages, display, text, [recipe, platform], "stages (the first, then one per step)")
            for stage, entry in stages.items():
                where = [recipe, platform, stage]
                stages_known = known_recipes.get(recipe) if isinstance(known_recipes, dict) else None
                if stages_known is not None and stage not in stages_known:
                    near = difflib.get_close_matches(stage, sorted(stages_known), n=1)
                    raise LedgerError(display, _line(text, where), f"unknown stage '{stage}' in [{recipe}.{platform}]",
                                      (f"did you mean '{near[0]}'? " if near else "") + "the recipe's stages are "
                                      f"{', '.join(sorted(stages_known))}; rename the table, or delete it if the "
                                      "stage is gone")
                if not STAGE_NAME.match(stage) and not (isinstance(entry, dict) and "phase" in entry):  # a zoo label may hold ':'
                    raise LedgerError(display, _line(text, where), f"'{stage}' in [{recipe}.{platform}] is not "
                                      "a stage name", "use the stage names of the recipe's plan (the first, "
                                      "then one per step)")
                _expect_table(entry, display, text, where, "metric = value pairs")
                team = (metrics or {}).get(recipe, set())
                ledger.entries[(recipe, platform, stage)] = _check_entry(entry, display, text, where, team)
    return ledger


def _expect_table(value: Any, display: str, text: str, where: list[str], what: str) -> None:
    if not isinstance(value, dict):
        raise LedgerError(display, _line(text, where), f"'{'.'.join(where)}' must be a table of {what}",
                          "write entries as [recipe.platform.stage] tables")


def _check_entry(entry: dict, display: str, text: str, where: list[str], team: set[str] = frozenset()) -> dict[str, Any]:
    name = ".".join(where)
    if "phase" in entry:
        return _check_zoo_entry(entry, display, text, where)
    measured = (*METRICS, *sorted(team))
    for key, value in entry.items():
        line = _line(text, where, key)
        if key not in FIELDS and key not in team:
            raise LedgerError(display, line, f"unknown field '{key}' in [{name}]",
                              f"fields are {', '.join(FIELDS)}" + (f", and the recipe's metrics {', '.join(sorted(team))}"
                                                                    if team else ""))
        if key in ("flops", "params", "ckpt_bytes"):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            want = "a whole number >= 0"
        elif key == "known_failure":
            ok = isinstance(value, str) and bool(TICKET.search(value))
            want = "a reason that names its ticket, e.g. \"GH-123: ...\", \"#123 ...\" or a URL"
        elif key == "calibration":
            ok, want = isinstance(value, str), "a string saying how the tolerances were measured"
        elif key == "tolerance":
            ok = isinstance(value, dict) and set(value) <= set(measured) and all(
                _number(v) and v >= 0 and (k != "test_acc" or v <= 1) for k, v in value.items())
            want = ("an inline table of metric = tolerance >= 0 over test_acc (absolute), flops, params, "
                    "ckpt_bytes (relative), e.g. { test_acc = 0.01, flops = 0.05 }")
        elif key == "observed":
            ok = isinstance(value, dict) and set(value) <= set(measured) and all(
                isinstance(v, list) and len(v) == 2 and all(_number(x) for x in v) and v[0] <= v[1]
                for v in value.values())
            want = "an inline table of metric = [min, max], e.g. { flops = [100, 120] }"
        elif key == STRUCTURE:
            ok = isinstance(value, dict) and all(
                isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)) for v in value.values())
            want = ("an inline table of the stage's structural facts (whole numbers and strings), as "
                    "--optcheck-update writes it")
        elif key == "written_by":
            ok = isinstance(value, dict) and all(isinstance(v, (str, int)) for v in value.values())
            want = "an inline table of the numerics fingerprint (cpu, capability, isa, threads, torch, ...)"
        elif key in team:
            ok, want = _number(value) and math.isfinite(value), "the metric's value (a finite number)"
        else:
            ok = _number(value) and value >= 0 and (key != "test_acc" or value <= 1)
            want = "a fraction in [0, 1]" if key == "test_acc" else "a number >= 0"
        if not ok:
            raise LedgerError(display, line, f"'{key}' in [{name}] is {value!r}", f"make it {want}")
    missing = [k for k in METRICS if k not in entry]
    if missing:
        raise LedgerError(display, _line(text, where), f"[{name}] lacks {', '.join(missing)}",
                          "add them, or delete the entry and run --optcheck-update to record it")
    return dict(entry)


def _check_zoo_entry(entry: dict, display: str, text: str, where: list[str]) -> dict[str, Any]:
    """A zoo model's known failure: ``known_failure`` (naming its ticket), ``phase``, optional ``match``."""
    from optcheck.recipes.zoo_phases import ALL_PHASES

    name = ".".join(where)
    for key, value in entry.items():
        line = _line(text, where, key)
        if key not in ZOO_FIELDS:
            raise LedgerError(display, line, f"unknown field '{key}' in [{name}] (a zoo model's entry: it has a phase)",
                              f"fields of a zoo model's entry are {', '.join(ZOO_FIELDS)}")
        if key == "phase" and value not in ALL_PHASES:
            raise LedgerError(display, line, f"phase = {value!r} in [{name}] is not a zoo phase",
                              f"use one of {', '.join(ALL_PHASES)}")
        if key == "known_failure" and not (isinstance(value, str) and TICKET.search(value)):
            raise LedgerError(display, line, f"'known_failure' in [{name}] is {value!r}",
                              "make it a reason that names its ticket, e.g. \"GH-123: ...\", \"#123 ...\" or a URL")
        if key == "match":
            try:
                ok = isinstance(value, str) and re.compile(value) is not None
            except re.error as exc:
                ok, value = False, f"{value!r} ({exc})"
            if not ok:
                raise LedgerError(display, line, f"'match' in [{name}] is not a regular expression: {value}",
                                  "write a Python regex searched in \"ErrorType: message\", e.g. \"Inconsistent keys\"")
    if "known_failure" not in entry:
        raise LedgerError(display, _line(text, where), f"[{name}] has a phase but no known_failure",
                          "add known_failure = \"<TICKET-1>: <why>\", or delete the entry")
    return dict(entry)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _line(text: str, where: list[str], key: str | None = None) -> int | None:
    """The line of table ``where`` (or of ``key`` inside it) in ``text``; best effort."""
    current: list[str] | None = None
    fallback = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("[") and not stripped.startswith("[["):
            current = [p.strip().strip('"\'') for p in stripped.strip("[] ").split("]")[0].split(".")]
            if key is None and current[:len(where)] == where:
                return number
            continue
        if key is not None and current == where and re.match(rf"{re.escape(key)}\s*=", stripped):
            return number
        if fallback is None and where and where[-1] in line:
            fallback = number
    return fallback


# -- comparing -----------------------------------------------------------------------------------------

def tolerances(entry: dict[str, Any], defaults: dict[str, float]) -> dict[str, float]:
    """The entry's tolerance per metric: its ``tolerance`` table, else its legacy fields, else
    ``defaults`` (``test_acc`` absolute; the others relative; 0 = exact)."""
    out = dict(defaults)
    for legacy, metric in LEGACY_TOLERANCE.items():
        if legacy in entry:
            out[metric] = float(entry[legacy])
    out.update({k: float(v) for k, v in entry.get("tolerance", {}).items()})
    return out


def _rule(metric: str, tol: float) -> str:
    if tol == 0:
        return "must match exactly"
    if metric == "test_acc":
        return f"tolerance +-{tol * 100:.2f} pp"
    if metric not in METRICS:
        return f"tolerance +-{tol:.4g}"
    return f"tolerance +-{tol * 100:.3g}%"


def compare(entry: dict[str, Any], measured: dict[str, Any], defaults: dict[str, float],
            team: tuple[str, ...] = ()) -> list[Mismatch]:
    """What differs between ``measured`` and the ledger ``entry``, under the entry's tolerances.
    ``team``: the recipe's own metrics (absolute tolerances, as ``test_acc``)."""
    tol = tolerances(entry, defaults)
    observed = entry.get("observed", {})
    out = []
    for metric in (*METRICS, *team):
        now, ref = measured.get(metric), entry.get(metric)
        if metric in team and ref is None:
            if now is not None:
                out.append(Mismatch(metric, now, None, "not in the ledger entry yet (record it with "
                                    "--optcheck-update)", None))
            continue
        if now is None or (metric == "ckpt_bytes" and not ref):
            continue
        absolute = metric == "test_acc" or metric in team
        allowed = tol.get(metric, 0.0) * (1 if absolute else abs(ref))
        if abs(now - ref) > allowed + 1e-9 * max(1.0, abs(ref)):
            shown = now if absolute else int(now)
            out.append(Mismatch(metric, shown, ref, _rule(metric, tol.get(metric, 0.0)), observed.get(metric)))
    return out + compare_structure(entry.get(STRUCTURE), measured.get(STRUCTURE))


def ordered_facts(facts: dict[str, Any]) -> dict[str, Any]:
    """The facts in ``build.structure.FACTS`` order (a cached artifact's come back sorted), others after."""
    from optcheck.build.structure import FACTS

    return {**{k: facts[k] for k in FACTS if k in facts}, **{k: v for k, v in facts.items() if k not in FACTS}}


def compare_structure(ref: dict[str, Any] | None, now: dict[str, Any] | None) -> list[Mismatch]:
    """The structural facts that differ from the entry's, each exactly; an entry without facts (written
    before optcheck recorded them) is one mismatch that asks for them to be recorded."""
    if not now:
        return []
    if ref is None:
        return [Mismatch(STRUCTURE, 0, None, "not in the ledger entry yet (record it with --optcheck-update: "
                         "the entry's other values stay as they are)")]
    return [Mismatch(f"{STRUCTURE}.{key}", now.get(key), ref.get(key), "a structural fact: must match exactly")
            for key in dict.fromkeys([*ref, *now]) if now.get(key) != ref.get(key)]


def new_entry(measured: dict[str, Any], old: dict[str, Any] | None, defaults: dict[str, float],
              fingerprint: dict[str, Any] | None = None, team: tuple[str, ...] = ()) -> dict[str, Any]:
    """The entry that accepts ``measured``; the tolerances, calibration and known_failure of ``old``
    are kept (new entries take ``defaults``)."""
    entry: dict[str, Any] = {"test_acc": round(float(measured["test_acc"]), 6), "flops": int(measured["flops"]),
                             "params": int(measured["params"]), "ckpt_bytes": int(measured.get("ckpt_bytes") or 0)}
    entry.update({name: float(f"{float(measured[name]):.6g}") for name in team if measured.get(name) is not None})
    if measured.get(STRUCTURE):
        entry[STRUCTURE] = ordered_facts(measured[STRUCTURE])
    entry["tolerance"] = {k: _round(v) for k, v in (tolerances(old, defaults) if old else defaults).items()}
    for key in ("observed", "calibration", "known_failure"):
        if old and key in old:
            entry[key] = old[key]
    if old is None or "calibration" not in old:
        entry["calibration"] = ("none: tolerances are the recipe's [ledger] defaults; measure them with "
                                "`pytest --optcheck --optcheck-calibrate 8`")
    if fingerprint:
        entry["written_by"] = dict(fingerprint)
    return entry


def _round(x: float) -> float:
    return float(f"{x:.4g}")


# -- judging one stage ---------------------------------------------------------------------------------

@dataclass
class Judgement:
    """The outcome of one ledger check: a failure message (or None), and the entry to write (or None)."""

    failure: str | None = None
    update: dict[str, Any] | None = None
    reference: dict[str, Any] | None = None
    mismatches: list[Mismatch] = field(default_factory=list)

    def details(self, measured: dict[str, Any], team: tuple[str, ...] = ()) -> dict[str, Any]:
        ref = self.reference or {}
        keys = (*METRICS, *team)
        return {
            "measured": {k: measured.get(k) for k in keys},
            "reference": {k: ref.get(k) for k in keys} if ref else None,
            "delta": {k: measured[k] - ref[k] for k in keys
                      if ref and measured.get(k) is not None and ref.get(k) is not None} if ref else None,
            "tolerance": tolerances(ref, {}) if ref else None,
            "structure": {"measured": measured.get(STRUCTURE), "reference": ref.get(STRUCTURE)},
            "mismatches": [m.render() for m in self.mismatches],
            "updated": self.update is not None,
        }


def defaults_for(recipe, exact_architecture: bool) -> dict[str, float]:
    """Tolerances of a new, uncalibrated entry: the recipe's ``[ledger]`` table; FLOPs and params
    exact when the recipe alone decides the stage's architecture."""
    d = recipe.ledger
    arch = 0.0 if exact_architecture else d.architecture_tolerance
    return {"test_acc": d.accuracy_tolerance, "flops": arch, "params": arch, "ckpt_bytes": d.bytes_tolerance,
            **{m.name: d.metric_tolerance for m in getattr(recipe, "metrics", [])}}


def team_metrics(recipe) -> tuple[str, ...]:
    return tuple(m.name for m in getattr(recipe, "metrics", []))


def judge(ledger: Ledger, recipe, platform: str, stage: str, measured: dict[str, Any],
          update: str | None, *, exact_architecture: bool = False,
          fingerprint: dict[str, Any] | None = None) -> Judgement:
    """Compare a stage's measured metrics with its ledger entry; ``update`` is None, "failed" or "all".

    ``fingerprint`` is this run's numerics (``numerics.fingerprint``): it is written into new
    entries and compared with the entry's ``written_by`` in a failure message.
    """
    from optcheck.core.numerics import describe, differences

    name = f"[{recipe.name}.{platform}.{stage}]"
    defaults = defaults_for(recipe, exact_architecture)
    team = team_metrics(recipe)
    measured = {**measured, **(measured.get("extra") or {})}  # the team's metrics beside optcheck's
    entry = ledger.entry(recipe.name, platform, stage)
    if entry is None:
        new = new_entry(measured, None, defaults, fingerprint, team)
        if update == "all":
            return Judgement(update=new)
        if update == "failed":
            return Judgement(f"{name} had no entry in the ledger {ledger.display}; --optcheck-update has "
                             f"now recorded test_acc={new['test_acc']}, flops={new['flops']:,}, "
                             f"params={new['params']:,}. Rerun to confirm, review the diff and commit it.",
                             update=new)
        return Judgement(f"{name} has no entry in the ledger {ledger.display}: record the current values "
                         f"with `pytest --optcheck --optcheck-update` (or measure tolerances with "
                         f"`--optcheck-calibrate 8`), review the diff and commit the ledger")
    mismatches = compare(entry, measured, defaults, team)
    accepted = new_entry(measured, entry, defaults, fingerprint, team)
    if mismatches and all(m.reference is None for m in mismatches):
        # only fields the entry does not hold yet (a new team metric, the structural facts): record them
        # and leave the accepted values, their tolerances and calibration as they are
        accepted = {**entry, **{k: accepted[k] for k in (*team, STRUCTURE) if k in accepted and k not in entry}}
    changed = any(accepted.get(k) != entry.get(k) for k in (*METRICS, *team, STRUCTURE))
    if update == "all":
        return Judgement(update=accepted if changed else None, reference=entry, mismatches=mismatches)
    if not mismatches:
        return Judgement(reference=entry)
    lines = [f"{name} differs from the ledger {ledger.display}:", *(f"  {m.render()}" for m in mismatches)]
    uncalibrated = "no (the recipe's [ledger] default tolerances)"
    lines.append(f"  calibrated: {entry.get('calibration', uncalibrated)}")
    written = entry.get("written_by")
    lines.append(f"  ledger written on: {describe(written)}")
    lines.append(f"  this run:          {describe(fingerprint)}")
    diff = differences(written, fingerprint)
    if written and fingerprint and not diff:
        lines.append("  same numerics as the run that wrote the ledger: the difference comes from code, data, "
                     "settings or library behaviour, not from this machine")
    if diff:
        lines.append(f"  numerics differ in: {', '.join(diff)} (a different numerics path: if the spread is "
                     f"real, recalibrate with `pytest --optcheck --optcheck-calibrate 8` on a machine "
                     f"that can reach both paths)")
    if "known_failure" in entry:
        lines.append(f"  known failure: {entry['known_failure']}")
        return Judgement("\n".join(lines), reference=entry, mismatches=mismatches)
    if update == "failed":
        lines.append("  --optcheck-update has written the new values to the ledger: rerun to confirm, "
                     "review the diff and commit it")
        return Judgement("\n".join(lines), update=accepted, reference=entry, mismatches=mismatches)
    lines.append("  if the change is intended, accept it with `pytest --optcheck --optcheck-update` and "
                 "commit the ledger; if not, this is a regression (or an improvement) to explain")
    return Judgement("\n".join(lines), reference=entry, mismatches=mismatches)
