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

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGE = "zoo"  # the cache's folder: entries/zoo/<key>
CODE_MODULES = ("zoo", "zoo_session", "models", "compat", "measure", "assertions", "pipeline", "training",
                "checks", "data", "stages")


def code_id() -> str:
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in CODE_MODULES:
        h.update((here / f"{name}.py").read_bytes())
    for f in sorted((here / "steps").glob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def result_key(recipe, case) -> str:
    from .keys import digest
    from .zoo import versions

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
        from .zoo import ModelResult, ModelStepper

        cache_key = result_key(recipe, case) if self.cache is not None else None
        if cache_key is not None:
            entry = self.cache.load(STAGE, cache_key)
            if entry is not None:
                if self.log:
                    self.log(f"zoo: {case.label} from the cache ({recipe.name}; --optcheck-rebuild runs it again)")
                return Replayed(ModelResult.from_dict(entry.meta["result"]))
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
        if key is None or not getattr(stepper, "done", False) or self.cache.load(STAGE, key) is not None:
            return
        from .cache import entry_meta_safe

        try:
            self.cache.store(STAGE, key, {}, entry_meta_safe({"result": stepper.result().as_dict(),
                                                              "recipe": recipe.name}))
        except OSError:
            pass


def known_failure(ledger, recipe_name: str, label: str, phase: str):
    """The ledger's known failure of ``label`` at ``phase`` (a ``zoo.KnownFailure``), or None."""
    if ledger is None:
        return None
    entry = ledger.entry(recipe_name, "cpu", label)
    if not entry or entry.get("phase") != phase or "known_failure" not in entry:
        return None
    from .ledger import TICKET
    from .zoo import KnownFailure

    text = entry["known_failure"]
    found = TICKET.search(text)  # the ledger refuses an entry without one
    ticket = found.group(1).rstrip(":;,.") if found else text
    reason = text[len(ticket):].lstrip(" :") if text.startswith(ticket) else text  # "#7: why" -> "why"
    return KnownFailure(label, phase, ticket, reason or text, entry.get("match"))
