"""The upgrade comparison as plain data: two sessions' reports (today's, the candidate's), the two
probes' restored logits, and the committed ledger's tolerances in; per recipe and stage, what moved out.

A comparison *fails* (``Comparison.failed``, the command's exit status) when
- a verdict flips (passed on one side, failed or errored on the other; skipped on either side is
  not a flip);
- a metric moves between the two sides by more than the ledger entry's calibrated tolerance
  (test_acc and the team's metrics absolute, FLOPs / params / checkpoint bytes relative; a metric the
  ledger does not hold is shown, not judged);
- a structural fact differs (``build.structure``: the ledger holds them exactly);
- a checkpoint written by the *older* side does not restore under the newer one, or restores to other
  outputs (new -> old is shown, not judged: a downgrade is not a promise).
Latency is compared as the checks' ratios (never absolute times), and warnings as the set of distinct
warnings each session's builds raised (``core.warnings_log``), both shown, not judged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STAGE_METRICS = ("test_acc", "val_acc", "flops", "params", "size_bytes", "ckpt_bytes", "sparsity")
LEDGER_RELATIVE = ("flops", "params", "ckpt_bytes")
LATENCY = ("speedup_at_least", "latency_ratio_below")
NUMERICS_MEAN = 1e-3  # a cross-version restore off by at most this x the logits' mean magnitude, same top-1: numerics
BAD = ("failed", "error", "xpassed")


@dataclass
class MetricRow:
    stage: str
    metric: str
    today: Any
    candidate: Any
    tolerance: float | None  # the ledger's; None: not held by the ledger
    relative: bool
    outside: bool

    @property
    def delta(self) -> float | None:
        if isinstance(self.today, (int, float)) and isinstance(self.candidate, (int, float)):
            return self.candidate - self.today
        return None


@dataclass
class Restore:
    """One stage checkpoint written by ``writer`` and restored by ``reader``."""

    stage: str
    writer: str
    reader: str
    status: str  # exact | numerics | differs | error | missing
    detail: str = ""
    judged: bool = True  # old -> new is judged; new -> old is informational


@dataclass
class RecipeDiff:
    path: str
    name: str
    flips: list[dict[str, Any]] = field(default_factory=list)
    same_verdicts: int = 0
    verdicts: list[dict[str, Any]] = field(default_factory=list)  # every check: today, candidate, flipped
    metrics: list[MetricRow] = field(default_factory=list)
    structure: list[dict[str, Any]] = field(default_factory=list)
    latency: list[dict[str, Any]] = field(default_factory=list)
    restores: list[Restore] = field(default_factory=list)
    only_one_side: str = ""  # the recipe ran on one side only


@dataclass
class Comparison:
    today: dict[str, Any]
    candidate: dict[str, Any]
    older: str  # which label wrote the older checkpoints ("today" or "candidate")
    recipes: list[RecipeDiff]
    new_warnings: list[dict[str, Any]]
    gone_warnings: list[dict[str, Any]]
    sessions: dict[str, dict[str, Any]]
    known: list[Any] = field(default_factory=list)  # upgrade.known entries
    versions: dict[str, dict[str, str]] = field(default_factory=dict)  # label -> installed versions
    ledger: str = ""  # the ledger whose tolerances judged the metrics ("" when the sessions ran without one)
    ledger_error: str = ""  # why the ledger could not be read: the metrics went unjudged, which fails

    def differences(self) -> list[dict[str, str]]:
        """Everything the upgrade must explain: ``{"where", "text"}`` (text: what a known failure matches)."""
        out = []
        for r in self.recipes:
            out += [{"where": f"{r.path}::{f['check']}", "text": f"{f['today']} -> {f['candidate']}: {f['message']}"}
                    for f in r.flips if f["judged"]]
            out += [{"where": f"{r.path} {m.stage}.{m.metric}",
                     "text": f"{m.today} -> {m.candidate}, outside the ledger tolerance"} for m in r.metrics if m.outside]
            out += [{"where": f"{r.path} {s['stage']}.structure.{s['fact']}", "text": f"{s['today']!r} -> {s['candidate']!r}"}
                    for s in r.structure]
            out += [{"where": f"{r.path} {x.stage}",
                     "text": f"saved by {x.writer} does not restore under {x.reader} ({x.status}): {x.detail}"}
                    for x in r.restores if x.judged and x.status not in ("exact", "numerics")]
            if r.only_one_side:
                out.append({"where": r.path, "text": r.only_one_side})
        return out

    def judged(self) -> tuple[list[dict[str, str]], list[dict[str, str]], list[str]]:
        """``(unexplained, known, stale)`` (``upgrade.known.classify``)."""
        from optcheck.upgrade.known import classify

        return classify(self.differences(), self.known, self.versions.get("today", {}),
                        self.versions.get("candidate", {}))

    @property
    def reasons(self) -> list[str]:
        """What fails the comparison: unexplained differences, and known failures that no longer show."""
        unexplained, _, stale = self.judged()
        broken = [f"the ledger could not be read, so no metric was judged against its tolerance: "
                  f"{self.ledger_error}"] if self.ledger_error else []
        return broken + [f"{d['where']}: {d['text'][:300]}" for d in unexplained] + stale

    @property
    def failed(self) -> bool:
        return bool(self.reasons)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("known"), d.pop("versions")
        for r, rd in zip(self.recipes, d["recipes"]):
            for row, m in zip(r.metrics, rd["metrics"]):
                m["delta"] = row.delta
        unexplained, known, stale = self.judged()
        d.update(failed=self.failed, reasons=self.reasons, known_failures=known, stale_known_failures=stale)
        return d


# -- the pieces --------------------------------------------------------------------------------------

def _headline(message: str) -> str:
    """A failure message's first line that says something (not xdist's "[gw0] linux -- Python ...")."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip() and not ln.lstrip().startswith("[gw")]
    return lines[0][:300] if lines else ""


def verdicts(today: dict[str, Any], candidate: dict[str, Any]) -> list[dict[str, Any]]:
    """Every check's outcome on both sides (``absent``: it did not run there), ``flipped`` as ``flips``
    judges it."""
    flipped = {f["check"] for f in flips(today, candidate)[0]}
    return [{"check": check, "today": today.get(check, {}).get("outcome", "absent"),
             "candidate": candidate.get(check, {}).get("outcome", "absent"), "flipped": check in flipped}
            for check in dict.fromkeys([*today, *candidate])]


def flips(today: dict[str, Any], candidate: dict[str, Any], older: str = "today") -> tuple[list[dict[str, Any]], int]:
    """Checks whose outcome is good on one side and bad on the other; and how many agree. A golden
    check that fails only on the older side is a newer checkpoint read by an older stack: shown, not
    judged (``judged``)."""
    out, same = [], 0
    for check in dict.fromkeys([*today, *candidate]):
        a = today.get(check, {}).get("outcome", "absent")
        b = candidate.get(check, {}).get("outcome", "absent")
        if "skipped" in (a, b) or a == b or (a not in BAD and b not in BAD):
            same += a == b
            continue
        bad_side = "candidate" if b in BAD else "today"
        message = ((candidate if bad_side == "candidate" else today).get(check) or {}).get("message", "")
        judged = not (check.split("::")[-1].startswith("golden[") and bad_side == older)
        out.append({"check": check, "today": a, "candidate": b, "message": _headline(message), "judged": judged})
    return out, same


def ledger_tolerances(ledger, recipe_name: str, platform: str, stage: str) -> dict[str, float]:
    from optcheck.ledger.entries import tolerances

    entry = ledger.entry(recipe_name, platform, stage) if ledger is not None else None
    return tolerances(entry, {}) if entry else {}


def metric_rows(stage: str, today: dict[str, Any], candidate: dict[str, Any], tol: dict[str, float]) -> list[MetricRow]:
    rows = []
    extra_a, extra_b = today.get("extra") or {}, candidate.get("extra") or {}
    for metric in (*STAGE_METRICS, *dict.fromkeys([*extra_a, *extra_b])):
        a = today.get(metric, extra_a.get(metric))
        b = candidate.get(metric, extra_b.get(metric))
        if a is None and b is None:
            continue
        t = tol.get(metric)
        relative = metric in LEDGER_RELATIVE
        outside = False
        if t is not None and isinstance(a, (int, float)) and isinstance(b, (int, float)):
            allowed = t * (abs(a) if relative else 1)
            outside = abs(b - a) > allowed + 1e-9 * max(1.0, abs(a))
        elif t is not None and (a is None) != (b is None):
            outside = True
        rows.append(MetricRow(stage, metric, a, b, t, relative, outside))
    return rows


def structure_rows(stage: str, today: dict[str, Any], candidate: dict[str, Any]) -> list[dict[str, Any]]:
    a, b = today.get("structure") or {}, candidate.get("structure") or {}
    if not a or not b:
        return []
    return [{"stage": stage, "fact": k, "today": a.get(k), "candidate": b.get(k)}
            for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]


def latency_rows(today: dict[str, Any], candidate: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for check in dict.fromkeys([*today, *candidate]):
        if check.rsplit("::", 1)[-1] not in LATENCY:
            continue
        a = (today.get(check) or {}).get("details", {}).get("ratio")
        b = (candidate.get(check) or {}).get("details", {}).get("ratio")
        if a is not None or b is not None:
            out.append({"check": check, "today": a, "candidate": b})
    return out


def warnings_of(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Every distinct warning the session's stage builds raised: ``(category, message) -> where``."""
    from optcheck.core.warnings_log import normalized

    out: dict[tuple[str, str], dict[str, Any]] = {}
    for recipe in report.get("recipes", []):
        for stage, info in recipe.get("stages", {}).items():
            for w in info.get("warnings", []) or []:
                message = normalized(w["message"])  # two sessions' working folders differ
                out.setdefault((w["category"], message[:160]), {**w, "message": message,
                                                          "first_seen": f"{recipe['path']}::{stage}"})
    return out


def compare_logits(written: Path | None, restored: Path | None) -> tuple[str, str]:
    """``(status, detail)`` of a checkpoint restored by another environment against the writer's own
    restore of it: exact, numerics (same top-1, mean difference below ``NUMERICS_MEAN`` of the logits'
    magnitude: another kernel path), or differs."""
    from safetensors.torch import load_file

    if written is None or restored is None:
        return "missing", "no logits to compare"
    a, b = load_file(str(written)), load_file(str(restored))
    if not (a["inputs"].shape == b["inputs"].shape and bool((a["inputs"] == b["inputs"]).all())):
        return "differs", "the two restores saw different inputs"
    x, y = a["logits"], b["logits"]
    if x.shape != y.shape:
        return "differs", f"logits of shape {tuple(y.shape)}, {tuple(x.shape)} when written"
    if bool((x == y).all()):
        return "exact", f"{len(x)} images, bit-identical logits"
    diff = (x - y).abs()
    agree = int((x.argmax(1) == y.argmax(1)).sum())
    scale = float(x.abs().mean()) or 1.0
    detail = (f"max |diff| {float(diff.max()):.3g}, mean {float(diff.mean()):.3g}; top-1 agrees on "
              f"{agree} of {len(x)}")
    if agree == len(x) and math.isfinite(float(diff.mean())) and float(diff.mean()) <= NUMERICS_MEAN * scale:
        return "numerics", detail
    return "differs", detail


def restores(recipe: str, stages: list[str], probes: dict[str, Any], older: str) -> list[Restore]:
    """Every stage checkpoint restored by the other side, against its writer's own restore."""
    out = []
    for writer, reader in (("today", "candidate"), ("candidate", "today")):
        judged = writer == older
        for stage in stages:
            tag = f"{writer}--{recipe}--{stage}"
            own, other = probes[writer], probes[reader]
            if tag in other.errors:
                out.append(Restore(stage, writer, reader, "error", other.errors[tag], judged))
            elif tag in own.errors:
                out.append(Restore(stage, writer, reader, "missing",
                                   f"its writer could not restore it either: {own.errors[tag]}", judged))
            else:
                status, detail = compare_logits(own.outputs.get(tag), other.outputs.get(tag))
                out.append(Restore(stage, writer, reader, status, detail, judged))
    return out


# -- the whole comparison ----------------------------------------------------------------------------

def compare(today, candidate, probes: dict[str, Any], *, ledger, older: str, known: list[Any] = (),
            versions: dict[str, dict[str, str]] | None = None, ledger_error: str = "") -> Comparison:
    """``today`` / ``candidate``: the two ``sessions.Session``; ``probes``: label -> ``sessions.Probe``;
    ``ledger``: the committed ledger (``None``: the sessions ran without one, or it could not be read:
    ``ledger_error`` says why, and fails the comparison)."""
    by_path_a = {r["path"]: r for r in today.report.get("recipes", [])}
    by_path_b = {r["path"]: r for r in candidate.report.get("recipes", [])}
    recipes = []
    for path in dict.fromkeys([*by_path_a, *by_path_b]):
        a, b = by_path_a.get(path), by_path_b.get(path)
        diff = RecipeDiff(path, (a or b)["recipe"])
        if a is None or b is None:
            diff.only_one_side = f"ran only {'today' if b is None else 'in the candidate'}"
            recipes.append(diff)
            continue
        diff.flips, diff.same_verdicts = flips(a.get("verdicts", {}), b.get("verdicts", {}), older)
        diff.verdicts = verdicts(a.get("verdicts", {}), b.get("verdicts", {}))
        # the ledger checks say which platform they judged on; "auto" (a warm session built nothing) is cpu
        platform = next((c["platform"] for c in (a.get("ledger") or {}).values() if c.get("platform")),
                        "cuda" if a.get("device") == "cuda" else "cpu")
        stages = [s for s in a.get("stages", {}) if s in b.get("stages", {})]
        for stage in stages:
            ma, mb = a["stages"][stage]["metrics"], b["stages"][stage]["metrics"]
            diff.metrics += metric_rows(stage, ma, mb, ledger_tolerances(ledger, diff.name, platform, stage))
            diff.structure += structure_rows(stage, ma, mb)
        diff.latency = latency_rows(a.get("verdicts", {}), b.get("verdicts", {}))
        with_files = [s for s in stages if a["stages"][s].get("files") and b["stages"][s].get("files")]
        diff.restores = restores(diff.name, with_files, probes, older) if probes else []
        recipes.append(diff)
    wa, wb = warnings_of(today.report), warnings_of(candidate.report)
    sessions = {s.env.label: {**s.env.as_dict(), "seconds": round(s.seconds, 1), "exit": s.returncode}
                for s in (today, candidate)}
    return Comparison(today.env.as_dict(), candidate.env.as_dict(), older, recipes,
                      [w for k, w in wb.items() if k not in wa], [w for k, w in wa.items() if k not in wb], sessions,
                      list(known), versions or {}, getattr(ledger, "display", "") if ledger is not None else "",
                      ledger_error)
