"""A session's zoo models: one ``ModelStepper`` per (recipe, model) in this process, results kept in
the artifact cache, and the known failures the regression ledger records.

A model's result (every phase) is stored in the cache once all its phases ran, under a key made of
the case, the phases, the seed and restores, the versions of Model Optimizer / torch / torchvision /
torchprofile and optcheck's own code: a warm session, or another CI shard sharing the cache, replays
it without importing torch. Unlike a budget, a zoo phase need not be deterministic (Model Optimizer
0.47's concatenation bug fails restores at random: ``zoo.RESTORE_TRIES``), so a replayed result is a
recorded observation: ``--optcheck-rebuild`` runs the models again.
"""

from __future__ import annotations

from optcheck.pipeline.store import MISSING

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGE = "zoo"  # the cache's folder: entries/zoo/<key>
# optcheck's code a zoo model's result depends on: the phases, the recipe path's pipeline and budget
CODE = ("zoo", "build", "steps", "checks/restore.py", "core/compat.py", "pipeline/run.py", "pipeline/preflight.py",
        "pipeline/checkpoints.py", "budgets/judges.py")


def code_id() -> str:
    from optcheck.core.hashing import code_digest

    return code_digest(*CODE)[:16]


def result_key(recipe, case) -> str:
    from optcheck.core.hashing import digest
    from optcheck.zoo.results import versions

    return digest({"case": case.as_dict(), "phases": list(recipe.phases), "seed": recipe.seed,
                   "restores": recipe.zoo.restores, "batch_size": recipe.zoo.batch_size, "versions": versions(),
                   "code": code_id(), "format": 1})


@dataclass
class Replayed:
    """A model's stored result, answering ``run_until`` as a stepper does."""

    result: Any
    cached: bool = True

    def run_until(self, phase: str):
        return self.result.phase(phase)


@dataclass
class ZooSession:
    cache: Any = None
    basetemp: Any = None
    log: Any = None
    threads: int | None = None
    steppers: dict[tuple[str, str], Any] = field(default_factory=dict)

    def stepper(self, recipe, case):
        """The stepper of ``case`` in ``recipe`` (the stored result when the cache has one)."""
        key = (str(Path(recipe.path).resolve()), case.name)
        if key not in self.steppers:
            self.steppers[key] = self._start(recipe, case)
        return self.steppers[key]

    def _start(self, recipe, case):
        from optcheck.zoo.results import ModelResult
        from optcheck.zoo.stepper import ModelStepper

        cache_key = result_key(recipe, case) if self.cache is not None else None
        if cache_key is not None:
            stored = self._store().read(STAGE, cache_key, lambda entry: ModelResult.from_dict(entry.meta["result"]))
            if stored is not MISSING:
                if self.log:
                    self.log(f"zoo: {case.label} from the cache ({recipe.name}; --optcheck-rebuild runs it again)")
                return Replayed(stored)
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        if self.basetemp:  # pytest's temporary folder (the plugin always gives one)
            workdir = self.basetemp(f"optcheck-zoo-{recipe.name}") / case.slug
        else:
            import tempfile

            workdir = Path(tempfile.mkdtemp(prefix=f"optcheck-zoo-{case.slug}-"))
        stepper = ModelStepper(case, recipe.phases, workdir, recipe.seed, batch_size=recipe.zoo.batch_size,
                               restores=recipe.zoo.restores, log=self.log)
        stepper.cache_key = cache_key
        return stepper

    def finished(self, recipe, case, stepper) -> None:
        """Keep a completed model's result (best effort: a full disk only costs a re-run)."""
        key = getattr(stepper, "cache_key", None)
        if key is None or not getattr(stepper, "done", False):
            return
        from optcheck.core.jsonsafe import jsonsafe

        self._store().put_once(STAGE, key, jsonsafe({"result": stepper.result().as_dict(), "recipe": recipe.name}))

    def _store(self):
        from optcheck.pipeline.store import Store

        return Store(self.cache, "the zoo", self.log or (lambda _m: None))


def known_failure(ledger, recipe_name: str, label: str, phase: str):
    """The ledger's known failure of ``label`` at ``phase`` (a ``zoo.KnownFailure``), or None."""
    if ledger is None:
        return None
    entry = ledger.entry(recipe_name, "cpu", label)
    if not entry or entry.get("phase") != phase or "known_failure" not in entry:
        return None
    from optcheck.ledger.entries import TICKET
    from optcheck.zoo.results import KnownFailure

    text = entry["known_failure"]
    found = TICKET.search(text)  # the ledger refuses an entry without one
    ticket = found.group(1).rstrip(":;,.") if found else text
    reason = text[len(ticket):].lstrip(" :") if text.startswith(ticket) else text  # "#7: why" -> "why"
    return KnownFailure(label, phase, ticket, reason or text, entry.get("match"))
