"""``RecipeRun``: builds each stage of one recipe at most once, in dependency order.

The stages are the recipe's plan (``steps.registry.plan``: the baseline, then one per step), each
built by its step kind's plain function, which receives a ``steps.api.StepRun``. This module decides
what runs when, remembers artifacts (and failures, so a broken stage is not retried by every budget),
takes them from the artifact cache when it has them (``store.Store.get_or_build``: keys from
``keys.py``, one builder under the lock), and runs each kind's checks before anything trains
(``preflight.py``). It never names a stage or a kind.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optcheck.core.errors import DatasetMissing, OptcheckError, Problem, RecipeError, StepError
from optcheck.core.numerics import torch_threads
from optcheck.pipeline.boundary import boundary
from optcheck.pipeline.events import Events
from optcheck.steps import registry

if TYPE_CHECKING:
    from optcheck.recipes.schema import Recipe


class _Upstream(Exception):
    """Carries the failure of the stage a build needed (its ``__cause__``) through that build."""


class StageFailed(OptcheckError):
    """A stage this one depends on raised earlier in the session."""


class RecipeRun:
    def __init__(self, recipe: Recipe, *, device: str = "auto", seed: int = 0,
                 workdir: Callable[[], Path] | None = None, log: Callable[[str], None] = lambda _m: None,
                 cache=None, threads: int | None = None):
        from optcheck.pipeline.store import Store

        self.recipe = recipe
        self.plan = registry.plan(recipe)  # the stages in order: the baseline, then one per step
        self.stages = {stage.name: stage for stage in self.plan}
        self.threads = threads
        self.stage_threads: dict[str, int] = {}  # stages built with another thread count (schedule.stage_threads)
        self.cache = cache  # an ``ArtifactCache``, or None: build everything
        self.store = Store(cache, recipe.name, log) if cache is not None else None
        self._events = Events()
        self._keys: dict[str, dict[str, Any]] | None = None
        self.device_name = device
        self.seed = seed
        self._workdir = workdir or self._own_workdir
        self.log = log
        self.artifacts: dict[str, Any] = {}
        self._errors: dict[str, BaseException] = {}
        self._ctx = None
        self._preflight_done = False
        self._preflight_error: BaseException | None = None
        self.bounds: dict[str, float] | None = None  # a searching step's smallest / full model (preflight)
        self._roundtrips: dict[str, Any] = {}

    def _own_workdir(self) -> Path:
        """Without a workdir factory (a ``RecipeRun`` outside pytest): a temporary folder removed when
        this run is garbage-collected or the interpreter exits."""
        import shutil
        import weakref

        path = Path(tempfile.mkdtemp(prefix=f"optcheck-{self.recipe.name}-"))
        weakref.finalize(self, shutil.rmtree, str(path), True)
        return path

    @property
    def path(self) -> str:
        return str(self.recipe.path)

    @property
    def events(self) -> dict[str, dict[str, Any]]:
        """Per stage: ``{"cache": hit|built|off|..., "key", "seconds", "waited", "threads"}``."""
        return self._events.stages

    @property
    def cache_seconds(self) -> float:
        """Time spent on the cache itself (keys, loads, checksums, stores): its overhead."""
        return self.store.seconds if self.store is not None else 0.0

    def set_threads(self, threads: int | None, stage_threads: dict[str, int] | None = None) -> None:
        """Build with ``threads`` from now on, and the stages in ``stage_threads`` with their own count
        (before anything is built: the keys hold the counts)."""
        self.threads = threads
        self.stage_threads = {s: n for s, n in (stage_threads or {}).items() if n != threads}
        self._keys = None
        if threads and self._ctx is not None:
            import torch

            torch.set_num_threads(threads)

    def _boundary(self, where: str, fix: str):
        return boundary(self.path, where, fix, self._ctx.workdir if self._ctx is not None else None)

    # -- context -------------------------------------------------------------------------------
    @property
    def ctx(self):
        """The stage context; building it loads the data (``DatasetMissing`` if absent)."""
        if self._ctx is None:
            from optcheck.build.artifacts import Context
            from optcheck.build.data import build_data
            from optcheck.build.training import resolve_device

            if self.threads:
                import torch

                torch.set_num_threads(self.threads)  # numerics depend on it: it is part of the cache key
            base = self.recipe.path.parent if self.recipe.path else None
            with self._boundary("loading the data (data.dataset)", fix="check the [data] table; if the "
                                "error is raised in your dataset factory, fix it there"):
                data = self._cached_data() or build_data(self.recipe.data, self.seed, base, self.path)
            self._ctx = Context(self.recipe, data, resolve_device(self.device_name), self.seed,
                                self._workdir(), self.log)
        return self._ctx

    def _cached_data(self):
        """A built-in tensor dataset's splits from the cache (built and stored on a miss), or None when
        the dataset is not one (``data.CACHEABLE``) or there is no cache. Saves a warm session
        scikit-learn's import and the split (1.3 s here)."""
        from optcheck.build import data as datamod

        key = datamod.data_key(self.recipe.data, self.seed) if self.store is not None else None
        if key is None:
            return None

        def write(bundle, folder: Path):
            datamod.bundle_to_file(bundle, folder / "splits.pt")
            return {"splits": folder / "splits.pt"}, {"recipe": self.recipe.name, "dataset": self.recipe.data.dataset}

        return self.store.get_or_build(
            "data", key, f"the data of {self.recipe.name}",
            lambda: datamod.build_data(self.recipe.data, self.seed, None, self.path),
            read=lambda entry: datamod.bundle_from_file(entry.files["splits"]), write=write).value

    @property
    def has_ctx(self) -> bool:
        return self._ctx is not None

    def fixed_architecture(self, stage: str) -> bool:
        """Whether the recipe alone decides the stage's architecture (no search upstream): then its FLOPs
        and params are exact on any machine (a search's result is not: last bits can pick another subnet)."""
        return not registry.searched_upstream(self.plan, stage)

    def fingerprint(self) -> dict[str, Any]:
        """The numerics this process builds with (``numerics.fingerprint``)."""
        from optcheck.core.numerics import fingerprint

        return fingerprint(self.ctx.device)

    def available_stages(self) -> list[str]:
        return [stage.name for stage in self.plan]

    def final_stage(self) -> str:
        """The compressed model ``[budgets]`` judges: the last step's stage."""
        return self.plan[-1].name

    def root_stage(self) -> str:
        """The stage every other descends from and is compared with: the trained baseline."""
        return self.plan[0].name

    # -- preflight -------------------------------------------------------------------------------
    def prepare(self) -> None:
        """``preflight`` once per run, its failure remembered: the first caller gets the whole error,
        every later one a line that points at it (as a failed stage does)."""
        if self._preflight_error is not None:
            first = self._preflight_error
            if isinstance(first, DatasetMissing):
                raise first
            lines = str(first).splitlines() or [""]
            cause = (first.cause if isinstance(first, StepError) else
                     lines[1].strip() if isinstance(first, RecipeError) and len(lines) > 1 else lines[0])
            raise StageFailed(f"the checks before training of {self.path} failed earlier in this session (the "
                              f"first check of the recipe shows the whole error): {cause}") from first
        try:
            self.preflight()
        except (OptcheckError, Exception) as exc:
            self._preflight_error = exc
            raise

    def preflight(self) -> None:
        """Load the data, build the model, run one forward pass and each step kind's own checks (e.g.
        a FastNAS target is reachable), before anything trains.

        Raises ``DatasetMissing`` (skip) or ``RecipeError`` / ``StepError``.
        """
        if self._preflight_done:
            return
        from optcheck.pipeline.preflight import check_budgets_can_fail, check_data, check_forward
        from optcheck.steps.api import StepCheck

        ctx = self.ctx
        check_data(ctx, self.path)
        with self._boundary("building the model (model.name, model.options)",
                            fix="check [model]; if the error is raised in your model factory, fix it there"):
            model = ctx.make_model()
        check_forward(ctx, model, self.path)
        for stage in self.plan:
            if stage.kind.preflight is not None:
                stage.kind.preflight(StepCheck(ctx, stage, self._boundary, self.cached_value, self._set_bounds))
        check_budgets_can_fail(self.recipe, self.bounds, self.path)
        self._preflight_done = True

    def _set_bounds(self, bounds: dict[str, float]) -> None:
        self.bounds = bounds

    def cached_value(self, name: str, material: dict[str, Any], compute: Callable[[], Any]) -> Any:
        """A small JSON-safe value (a search space's bounds) from the cache, else computed under the
        cache's lock and stored; ``material`` plus the baseline's key decide it."""
        if self.store is None:
            return compute()
        from optcheck.core.hashing import digest

        with self.store.timed():
            material = {"name": name, "after": self.keys[self.root_stage()]["key"], **material}
            key = digest(material)
        return self.store.get_or_build(
            name, key, f"the {name} of {self.recipe.name}", compute, read=lambda entry: entry.meta["value"],
            write=lambda value, _folder: ({}, {"value": value, "recipe": self.recipe.name,
                                                "key_material": material})).value

    @property
    def keys(self) -> dict[str, dict[str, Any]]:
        """Content keys of the cacheable stages (``keys.stage_keys``), computed once."""
        if self._keys is None:
            from optcheck.pipeline.keys import stage_keys

            self._keys = stage_keys(self.recipe, self.ctx.data, self.ctx.device, self.seed, self.stage_threads)
        return self._keys

    # -- stages ------------------------------------------------------------------------------------
    def artifact(self, stage: str):
        """The stage's artifact: remembered, from the cache, or built (its parent first)."""
        if stage not in self.stages:
            kinds = [repr(k.kind) for k in registry.KINDS.values() if k.stage == stage and k.schema is not None]
            fix = (f"add a [[steps]] table with kind = {' or '.join(kinds)}" if kinds
                   else "name one of the recipe's stages")
            raise RecipeError(self.path, [Problem("steps", f"the recipe has no stage {stage!r}; its stages are "
                                                  f"{', '.join(self.stages)}", fix=fix)])
        if stage in self.artifacts:
            return self.artifacts[stage]
        if stage in self._errors:
            first = self._errors[stage]
            cause = first.cause if isinstance(first, StepError) else f"{type(first).__name__}: " + (
                str(first).splitlines() or [""])[0]
            raise StageFailed(f"stage '{stage}' of {self.path} failed earlier in this session (the first check "
                              f"that needed it shows the whole error): {cause}") from first

        def parent():
            """The stage it is built from, obtained only if it is built (a cache hit needs none)."""
            above = self.stages[stage].parent
            if above is None:
                return None
            try:
                return self.artifact(above)
            except BaseException as exc:
                raise _Upstream() from exc  # that stage's failure, already recorded for it

        try:
            self.artifacts[stage] = self._obtain(stage, parent)
        except _Upstream as up:
            raise up.__cause__  # the original, with its own cause; not recorded for this stage
        except BaseException as exc:
            self._errors[stage] = exc
            raise
        return self.artifacts[stage]

    def _obtain(self, stage: str, parent):
        """The stage's artifact from the cache, or built (by this process, or by the one holding its
        lock) and stored."""
        from optcheck.pipeline import checkpoints

        start = time.perf_counter()
        threads = self.stage_threads.get(stage, self.threads)
        if self.store is None:
            artifact = self._build(stage, parent)
            self._events.record(stage, start, cache="off", key=None, threads=threads)
            return artifact
        self.prepare()
        with self.store.timed():
            material = self.keys[stage]
        plan = self.stages[stage]

        def read(entry):
            self.log(f"{self.recipe.name}: {stage} from cache ({self.cache.show(entry.path)})")
            return checkpoints.load_artifact(self.ctx, plan, entry.files, entry.meta,
                                             load=lambda: self._load_model(stage, entry, parent))

        def write(artifact, _folder):
            return artifact.files, {**checkpoints.entry_meta(artifact), "recipe": self.recipe.name,
                                    "key_material": material}

        got = self.store.get_or_build(stage, material["key"], f"the {stage} of {self.recipe.name}",
                                      lambda: self._build(stage, parent), read=read, write=write)
        fields = {"cache": got.outcome, "key": material["key"], "waited": got.waited}
        if got.outcome.startswith("built"):
            fields["threads"] = threads
        self._events.record(stage, start, **fields)
        return got.value

    def _load_model(self, stage: str, entry, parent):
        """A cached stage's model, when a check first needs it. Checksums matched but the files do not
        load (never a crash): the entry goes to quarantine and the stage is rebuilt; the artifact the
        session holds takes the rebuilt one's model and metrics."""
        from optcheck.core.quiet import library_noise
        from optcheck.pipeline import checkpoints

        try:
            with library_noise():
                return checkpoints.load_model(self.ctx, self.stages[stage], entry.files)
        except Exception as exc:
            self.cache.quarantine(entry.path, f"it could not be loaded ({type(exc).__name__}: {exc})")
        # built here, not through get_or_build: an entry that quarantine could not move would be found again
        with self.cache.lock(stage, entry.key, f"the {stage} of {self.recipe.name}"):
            rebuilt = self._build(stage, parent)
            meta = {**checkpoints.entry_meta(rebuilt), "recipe": self.recipe.name, "key_material": self.keys[stage]}
            self.store.put(stage, entry.key, rebuilt.files, meta)
        self._events.update(stage, cache="rebuilt (entry did not load)")
        held = self.artifacts.get(stage)
        if held is not None and held is not rebuilt:
            held.metrics, held.path, held.files, held.info = rebuilt.metrics, rebuilt.path, rebuilt.files, rebuilt.info
        return rebuilt.model

    def _build(self, stage: str, parent_of):
        """Build ``stage`` with its step kind, from its parent's checkpoint restored into a freshly
        built model (``mto.restore``; a state dict for the baseline).

        Never from the parent's in-memory model: a step may change the model it is given in place
        (``mtq.quantize``, ``mts.sparsify``), and a session that finds the parent in the cache can
        only restore it; building from the restored checkpoint keeps a stage the same whether or not
        its parent was built in this process (tests/test_pipeline.py)."""
        from optcheck.build.artifacts import Artifact
        from optcheck.core.quiet import library_noise
        from optcheck.core.warnings_log import recording, replay, summary
        from optcheck.pipeline.checkpoints import architecture_files, load_model
        from optcheck.steps.api import StepRun

        started = time.perf_counter()
        parent = parent_of()
        self._events.upstream(stage, time.perf_counter() - started)  # not this stage's time
        self.prepare()
        ctx, plan = self.ctx, self.stages[stage]
        threads = self.stage_threads.get(stage)
        self.log(f"{self.recipe.name}: building {stage}" + (f" ({threads} threads: every recipe needs it)"
                                                             if threads else ""))
        started = time.perf_counter()
        with library_noise(), torch_threads(threads), self._boundary(
                f"stage '{stage}', built by {plan.label}",
                fix="see the cause; if it is raised in your own code (model, dataset), fix it there, else run "
                    "with --fulltrace and report it with that output"):
            above = self.stages[plan.parent] if plan.parent else None
            given = None if parent is None else Artifact(
                parent.stage, None, parent.metrics, parent.path, parent.files, parent.info,
                load=lambda: load_model(ctx, above, parent.files))
            with recording() as caught:
                artifact = plan.kind.build(StepRun(ctx, plan, self.artifact, self.root_stage()), given)
            artifact.info["warnings"] = summary(caught)  # kept with the artifact: the upgrade diff reads them
            replay(caught)  # inside library_noise: its noise stays hidden
            if parent is not None:  # carried along: its own checkpoint restores into that architecture
                artifact.files = {**architecture_files(parent.files), **artifact.files}
        self.log(f"{self.recipe.name}: built {stage} in {time.perf_counter() - started:.1f} s "
                 f"(test acc {artifact.metrics.test_acc:.2%}, {artifact.metrics.flops:,} FLOPs)")
        return artifact

    def roundtrip(self, stage: str):
        """The stage's checkpoint restored into a freshly built model (``mto.restore`` for a Model
        Optimizer stage), once per session: what a user of the checkpoint gets."""
        if stage not in self._roundtrips:
            from optcheck.core.quiet import library_noise
            from optcheck.pipeline.checkpoints import load_model

            artifact = self.artifact(stage)
            with library_noise():
                self._roundtrips[stage] = load_model(self.ctx, self.stages[stage], artifact.files)
        return self._roundtrips[stage]


def stages_of(recipe: Recipe) -> list[str]:
    """The stages a recipe's steps produce, in pipeline order."""
    return [stage.name for stage in registry.plan(recipe)]

