"""One model's zoo phases, run one at a time on demand (``ModelStepper``) or all at once (``run_model``)."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from optcheck.core.compat import import_modelopt
from optcheck.recipes.zoo import ModelCase
from optcheck.recipes.zoo_phases import PHASES, check_phases
from optcheck.zoo import phases as phase_functions
from optcheck.zoo.common import PHASE_HINTS, RESTORE_TRIES
from optcheck.zoo.phases import ModelState
from optcheck.zoo.recipe_path import recipe_path
from optcheck.zoo.results import FAILED, NOT_RUN, PASSED, ModelResult, PhaseResult, trim_message, versions

# every phase, by name: a plain function of the state the phases before it left
PHASE_FUNCTIONS = {**phase_functions.TABLE, "recipe_path": recipe_path}


def run_model(case: ModelCase, phases: Iterable[str] = PHASES, workdir: str | Path | None = None,
              seed: int = 0, *, batch_size: int = 2, restores: int = RESTORE_TRIES,
              log: Callable[[str], None] | None = None) -> ModelResult:
    """Run ``phases`` on ``case`` on CPU, in order; the first failure stops the rest. Files go to
    ``workdir`` (a temporary folder, removed after, when None). The imports (modelopt, torchvision)
    happen before the clock starts, so the first model's time is its own."""
    own = workdir is None
    root = Path(tempfile.mkdtemp(prefix="optcheck-zoo-")) if own else Path(workdir)
    try:
        stepper = ModelStepper(case, phases, root, seed, batch_size=batch_size, restores=restores, log=log)
        stepper.run_until(stepper.order[-1])
        return stepper.result()
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)


class ModelStepper:
    """One model's phases run one at a time, on demand: ``run_until(phase)`` runs the phases up to and
    including ``phase`` that have not run yet (each needs the one before) and returns its result. The
    pytest items of a zoo recipe (one per model and phase) call it in turn, so each phase's time and
    verdict belong to its own item; a phase after a failed one is "not run". ``run_model`` is the
    same, all at once."""

    def __init__(self, case: ModelCase, phases: Iterable[str], workdir: str | Path, seed: int = 0, *,
                 batch_size: int = 2, restores: int = RESTORE_TRIES, log: Callable[[str], None] | None = None):
        self.order = check_phases(phases)
        if batch_size < 2:
            raise ValueError("batch_size >= 2: a training-mode BatchNorm needs two samples")
        if restores < 1:
            raise ValueError("restores >= 1")
        self.case, self.seed, self.batch_size, self.restores, self.log = case, seed, batch_size, restores, log
        self.root = Path(workdir)
        self.results: list[PhaseResult] = []
        self.seconds = 0.0
        self._state: ModelState | None = None
        self._failed: str | None = None
        self._imported = False

    @property
    def done(self) -> bool:
        return len(self.results) == len(self.order)

    def run_until(self, phase: str) -> PhaseResult:
        if phase not in self.order:
            raise ValueError(f"{self.case.name}: phase {phase!r} is not one of this run's ({', '.join(self.order)})")
        if not self._imported:  # outside the clock: the first model's time is its own
            import_modelopt()
            if self.case.name.startswith("torchvision:"):
                import torchvision.models  # noqa: F401
            self.root.mkdir(parents=True, exist_ok=True)
            self._imported = True
        while len(self.results) <= self.order.index(phase):
            self._step(self.order[len(self.results)])
        if self.done:
            self._state = None  # the models and tensors go; the results stay
        return self.results[self.order.index(phase)]

    def _step(self, phase: str) -> None:
        if self._failed is not None:
            self.results.append(PhaseResult(phase, NOT_RUN, message=f"not run (after {self._failed} failed)"))
            return
        t0 = time.perf_counter()
        try:
            if self._state is None:
                self._state = ModelState(self.case, self.root, self.seed, self.batch_size, self.restores)
            details = PHASE_FUNCTIONS[phase](self._state)
        except Exception as exc:  # noqa: BLE001 - any failure of a phase is the finding
            self._failed, self._state = phase, None
            self.results.append(PhaseResult(phase, FAILED, time.perf_counter() - t0,
                                            getattr(exc, "error_type", None) or type(exc).__name__,
                                            trim_message(exc), getattr(exc, "hint", None) or PHASE_HINTS[phase]))
        else:
            self.results.append(PhaseResult(phase, PASSED, time.perf_counter() - t0, details=details or {}))
        last = self.results[-1]
        self.seconds += last.seconds
        if self.log is not None:
            self.log(f"zoo: {self.case.label} {phase} {last.status} in {last.seconds:.2f} s"
                     + (f": {last.error}" if last.status == FAILED else ""))

    def result(self) -> ModelResult:
        return ModelResult(self.case, list(self.results), self.seconds, self.seed, versions())
