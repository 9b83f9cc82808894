"""The regression ledger: a committed TOML file of accepted metrics per recipe, platform and stage.

    [digits_resnet20_fastnas.cpu.baseline]
    test_acc = 0.986111
    flops = 81102208
    params = 269722
    ckpt_bytes = 1089925
    accuracy_tolerance = 0.01     # absolute, two-sided
    bytes_tolerance = 0.05        # relative, two-sided
    known_failure = "GH-42: ..."  # optional: the check xfails with this reason

FLOPs and params must match exactly; test accuracy and checkpoint bytes within the entry's
tolerances, in both directions (an improvement is a mismatch too, so the reference moves on
purpose). Times are never gated.

Reading validates everything and names the line of any problem (``LedgerError``). Writing happens
once per session, in one process (the xdist controller), after every check has run: values change in
place (comments and order are kept, via tomlkit) and new entries are appended in a fixed order, so a
review diff shows only what changed. The file is replaced atomically.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import OptcheckError

PLATFORMS = ("cpu", "cuda")
STAGES = ("baseline", "pruned", "finetuned")
METRICS = ("test_acc", "flops", "params", "ckpt_bytes")
FIELDS = (*METRICS, "accuracy_tolerance", "bytes_tolerance", "known_failure")
TICKET = re.compile(r"([A-Z][A-Z0-9]+-\d+|#\d+|https?://\S+)")
HEADER = """\
# optcheck regression ledger: the accepted metrics of each recipe's stages, per platform.
# flops and params must match exactly; test_acc within +-accuracy_tolerance (absolute) and
# ckpt_bytes within +-bytes_tolerance (relative), in both directions. Times are not gated.
# Accept new values with `pytest --optcheck --optcheck-update` (failed or missing entries only)
# or `--optcheck-update-all`, then review the diff and commit it. To record a known failure, add
# known_failure = "<TICKET-1>: <why>" to its entry: the check then xfails with that reason.
"""


class LedgerError(OptcheckError):
    def __init__(self, path: str, line: int | None, message: str, fix: str):
        self.path, self.line, self.message, self.fix = path, line, message, fix
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}\n  fix: {fix}\n  (the ledger file was not changed)")


@dataclass
class Mismatch:
    metric: str
    measured: float
    reference: float
    rule: str

    def render(self) -> str:
        if self.metric == "test_acc":
            delta = f"{(self.measured - self.reference) * 100:+.2f} pp"
            return (f"test_acc: {self.measured * 100:.2f}% now, {self.reference * 100:.2f}% in the ledger "
                    f"({delta}; {self.rule})")
        rel = (self.measured - self.reference) / self.reference * 100 if self.reference else math.inf
        return f"{self.metric}: {self.measured:,} now, {self.reference:,} in the ledger ({rel:+.2f}%; {self.rule})"


@dataclass
class Ledger:
    path: Path
    display: str
    entries: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    exists: bool = False

    def entry(self, recipe: str, platform: str, stage: str) -> dict[str, Any] | None:
        return self.entries.get((recipe, platform, stage))


def load_ledger(path: Path, known_recipes: set[str] | None = None, display: str | None = None) -> Ledger:
    """Read and validate the ledger; a missing file is an empty ledger. Raises ``LedgerError``."""
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
            _expect_table(stages, display, text, [recipe, platform], f"stages ({', '.join(STAGES)})")
            for stage, entry in stages.items():
                where = [recipe, platform, stage]
                if stage not in STAGES:
                    raise LedgerError(display, _line(text, where), f"unknown stage '{stage}' in "
                                      f"[{recipe}.{platform}]", f"use one of {', '.join(STAGES)}")
                _expect_table(entry, display, text, where, "metric = value pairs")
                ledger.entries[(recipe, platform, stage)] = _check_entry(entry, display, text, where)
    return ledger


def _expect_table(value: Any, display: str, text: str, where: list[str], what: str) -> None:
    if not isinstance(value, dict):
        raise LedgerError(display, _line(text, where), f"'{'.'.join(where)}' must be a table of {what}",
                          "write entries as [recipe.platform.stage] tables")


def _check_entry(entry: dict, display: str, text: str, where: list[str]) -> dict[str, Any]:
    name = ".".join(where)
    for key, value in entry.items():
        line = _line(text, where, key)
        if key not in FIELDS:
            raise LedgerError(display, line, f"unknown field '{key}' in [{name}]",
                              f"fields are {', '.join(FIELDS)}")
        if key in ("flops", "params", "ckpt_bytes"):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            want = "a whole number >= 0"
        elif key == "known_failure":
            ok = isinstance(value, str) and bool(TICKET.search(value))
            want = "a reason that names its ticket, e.g. \"GH-123: ...\", \"#123 ...\" or a URL"
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 and (
                key != "test_acc" or value <= 1)
            want = "a fraction in [0, 1]" if key == "test_acc" else "a number >= 0"
        if not ok:
            raise LedgerError(display, line, f"'{key}' in [{name}] is {value!r}", f"make it {want}")
    missing = [k for k in METRICS if k not in entry]
    if missing:
        raise LedgerError(display, _line(text, where), f"[{name}] lacks {', '.join(missing)}",
                          "add them, or delete the entry and run --optcheck-update to record it")
    return dict(entry)


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

def compare(entry: dict[str, Any], measured: dict[str, Any], default_acc_tol: float,
            default_bytes_tol: float) -> list[Mismatch]:
    """What differs between ``measured`` and the ledger ``entry``, under the entry's tolerances."""
    out = []
    for metric in ("flops", "params"):
        if int(measured[metric]) != int(entry[metric]):
            out.append(Mismatch(metric, int(measured[metric]), int(entry[metric]), "must match exactly"))
    tol = float(entry.get("accuracy_tolerance", default_acc_tol))
    if abs(measured["test_acc"] - entry["test_acc"]) > tol + 1e-12:
        out.append(Mismatch("test_acc", measured["test_acc"], entry["test_acc"],
                            f"tolerance +-{tol * 100:.2f} pp, both directions"))
    btol = float(entry.get("bytes_tolerance", default_bytes_tol))
    if measured.get("ckpt_bytes") is not None and entry["ckpt_bytes"] and \
            abs(measured["ckpt_bytes"] - entry["ckpt_bytes"]) > btol * entry["ckpt_bytes"]:
        out.append(Mismatch("ckpt_bytes", int(measured["ckpt_bytes"]), int(entry["ckpt_bytes"]),
                            f"tolerance +-{btol * 100:g}%"))
    return out


def new_entry(measured: dict[str, Any], old: dict[str, Any] | None, acc_tol: float,
              bytes_tol: float) -> dict[str, Any]:
    """The entry that accepts ``measured``; tolerances and known_failure of ``old`` are kept."""
    entry = {"test_acc": round(float(measured["test_acc"]), 6), "flops": int(measured["flops"]),
             "params": int(measured["params"]), "ckpt_bytes": int(measured.get("ckpt_bytes") or 0),
             "accuracy_tolerance": acc_tol, "bytes_tolerance": bytes_tol}
    for key in ("accuracy_tolerance", "bytes_tolerance", "known_failure"):
        if old and key in old:
            entry[key] = old[key]
    return entry


# -- writing ---------------------------------------------------------------------------------------------

def write_updates(path: Path, updates: dict[tuple[str, str, str], dict[str, Any]]) -> None:
    """Apply ``{(recipe, platform, stage): entry}`` to the file at ``path`` and replace it atomically.

    Existing tables keep their place and comments (values change in place); new tables are appended
    in sorted recipe/platform order and pipeline stage order.
    """
    import tomlkit

    if not updates:
        return
    doc = tomlkit.parse(path.read_text(encoding="utf-8")) if path.exists() else tomlkit.parse(HEADER)
    order = {s: i for i, s in enumerate(STAGES)}
    for (recipe, platform, stage), entry in sorted(updates.items(), key=lambda kv: (kv[0][0], kv[0][1], order[kv[0][2]])):
        if recipe not in doc:
            doc.append(recipe, tomlkit.table(is_super_table=True))
        if platform not in doc[recipe]:
            doc[recipe].append(platform, tomlkit.table(is_super_table=True))
        tables = doc[recipe][platform]
        if stage in tables:
            table = tables[stage]
            for key in FIELDS:
                if key in entry and (key not in table or table[key] != entry[key]):
                    table[key] = entry[key]
        else:
            table = tomlkit.table()
            for key in FIELDS:
                if key in entry:
                    table.add(key, entry[key])
            tables.append(stage, table)
    text = tomlkit.dumps(doc)
    tomllib.loads(text)  # never write a file we could not read back
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# -- judging one stage ---------------------------------------------------------------------------------

@dataclass
class Judgement:
    """The outcome of one ledger check: a failure message (or None), and the entry to write (or None)."""

    failure: str | None = None
    update: dict[str, Any] | None = None
    reference: dict[str, Any] | None = None
    mismatches: list[Mismatch] = field(default_factory=list)

    def details(self, measured: dict[str, Any]) -> dict[str, Any]:
        ref = self.reference or {}
        return {
            "measured": {k: measured.get(k) for k in METRICS},
            "reference": {k: ref.get(k) for k in METRICS} if ref else None,
            "delta": {k: measured[k] - ref[k] for k in METRICS if ref and measured.get(k) is not None} if ref else None,
            "mismatches": [m.render() for m in self.mismatches],
            "updated": self.update is not None,
        }


def judge(ledger: Ledger, recipe, platform: str, stage: str, measured: dict[str, Any],
          update: str | None) -> Judgement:
    """Compare a stage's measured metrics with its ledger entry; ``update`` is None, "failed" or "all"."""
    name = f"[{recipe.name}.{platform}.{stage}]"
    acc_tol, bytes_tol = recipe.ledger.accuracy_tolerance, recipe.ledger.bytes_tolerance
    entry = ledger.entry(recipe.name, platform, stage)
    if entry is None:
        new = new_entry(measured, None, acc_tol, bytes_tol)
        if update == "all":
            return Judgement(update=new)
        if update == "failed":
            return Judgement(f"{name} had no entry in the ledger {ledger.display}; --optcheck-update has "
                             f"now recorded test_acc={new['test_acc']}, flops={new['flops']:,}, "
                             f"params={new['params']:,}. Rerun to confirm, review the diff and commit it.",
                             update=new)
        return Judgement(f"{name} has no entry in the ledger {ledger.display}: record the current values "
                         f"with `pytest --optcheck --optcheck-update`, review the diff and commit the ledger")
    mismatches = compare(entry, measured, acc_tol, bytes_tol)
    accepted = new_entry(measured, entry, acc_tol, bytes_tol)
    changed = any(accepted[k] != entry.get(k) for k in METRICS)
    if update == "all":
        return Judgement(update=accepted if changed else None, reference=entry, mismatches=mismatches)
    if not mismatches:
        return Judgement(reference=entry)
    lines = [f"{name} differs from the ledger {ledger.display}:", *(f"  {m.render()}" for m in mismatches)]
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
