"""``RecipeRun``: builds each stage of one recipe at most once, in dependency order.

The stages are the recipe's plan (``steps.plan``: the baseline, then one per step), each built by its
step kind's plain function (``optcheck/steps/``). This module only decides what runs when, remembers
artifacts (and failures, so a broken stage is not retried by every budget), takes them from the
artifact cache when it has them (``cache.py``, keys from ``keys.py``; one get-or-build path, under
the lock), and runs each kind's checks before anything trains. It never names a stage or a kind.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import steps as registry
from .errors import (DatasetMissing, EvaluationError, OptcheckError, Problem, RecipeError, StepError,
                     summarize_exception)
from .recipe import Recipe


class _Upstream(Exception):
    """Carries the failure of the stage a build needed (its ``__cause__``) through that build."""


class StageFailed(OptcheckError):
    """A stage this one depends on raised earlier in the session."""


class RecipeRun:
    def __init__(self, recipe: Recipe, *, device: str = "auto", seed: int = 0,
                 workdir: Callable[[], Path] | None = None, log: Callable[[str], None] = lambda _m: None,
                 cache=None, threads: int | None = None):
        self.recipe = recipe
        self.plan = registry.plan(recipe)  # the stages in order: the baseline, then one per step
        self.stages = {stage.name: stage for stage in self.plan}
        self.threads = threads
        self.stage_threads: dict[str, int] = {}  # stages built with another thread count (schedule.stage_threads)
        self.cache = cache  # an ``ArtifactCache``, or None: build everything
        self.events: dict[str, dict[str, Any]] = {}  # stage -> {"cache": hit|built|off, "key", "seconds"}
        self._keys: dict[str, dict[str, Any]] | None = None
        self.cache_seconds = 0.0  # time spent on cache work (keys, loads, checksums, stores)
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
        self._upstream: dict[str, float] = {}  # stage -> seconds its build spent obtaining its parent

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

    def set_threads(self, threads: int | None, stage_threads: dict[str, int] | None = None) -> None:
        """Build with ``threads`` from now on, and the stages in ``stage_threads`` with their own count
        (before anything is built: the keys hold the counts)."""
        self.threads = threads
        self.stage_threads = {s: n for s, n in (stage_threads or {}).items() if n != threads}
        self._keys = None
        if threads and self._ctx is not None:
            import torch

            torch.set_num_threads(threads)

    # -- context -------------------------------------------------------------------------------
    @property
    def ctx(self):
        """The stage context; building it loads the data (``DatasetMissing`` if absent)."""
        if self._ctx is None:
            from .data import build_data
            from .stages import Context
            from .training import resolve_device

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
        from . import data as datamod

        key = datamod.data_key(self.recipe.data, self.seed) if self.cache is not None else None
        if key is None:
            return None
        for attempt in (1, 2):
            with self._cache_work():
                entry = self.cache.load("data", key)
            if entry is not None:
                try:
                    return datamod.bundle_from_file(entry.files["splits"])
                except Exception as exc:  # verified but unreadable: rebuilt below
                    self.cache.quarantine(entry.path, f"it could not be loaded ({type(exc).__name__}: {exc})")
            if attempt == 2:
                break
            with self.cache.lock("data", key, f"the data of {self.recipe.name}"):
                if self.cache.load("data", key) is not None:
                    continue  # built by another process while we waited
                bundle = datamod.build_data(self.recipe.data, self.seed, None, self.path)
                path = Path(tempfile.mkdtemp(prefix="optcheck-data-")) / "splits.pt"
                try:
                    with self._cache_work():
                        datamod.bundle_to_file(bundle, path)
                        self._store("data", key, {"splits": path},
                                    {"recipe": self.recipe.name, "dataset": self.recipe.data.dataset})
                finally:
                    import shutil

                    shutil.rmtree(path.parent, ignore_errors=True)
                return bundle
        return None  # the entry another process stored does not load: build without the cache

    @contextlib.contextmanager
    def _boundary(self, where: str, fix: str):
        """Turn anything but optcheck's own errors into one ``StepError`` naming the recipe and ``where``."""
        try:
            yield
        except RecipeError as exc:
            if exc.path in ("<recipe>", "", None):
                exc.path = self.path
            raise
        except EvaluationError as exc:  # a meaningless number refused: say in which recipe and stage
            raise StepError(self.path, where, f"{type(exc).__name__}: {exc}",
                            "see the cause: the data and the model disagree") from exc
        except (OptcheckError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            cause, origin = summarize_exception(exc)
            raise StepError(self.path, where, cause, _fix_for(exc, fix, self), origin) from exc

    def step_label(self, stage: str) -> str:
        """What builds ``stage``, as a recipe author reads it: "steps[0] (kind = 'fastnas')"."""
        return self.stages[stage].label

    @property
    def has_ctx(self) -> bool:
        return self._ctx is not None

    def fixed_architecture(self, stage: str) -> bool:
        """Whether the recipe alone decides the stage's architecture (no search upstream): then its FLOPs
        and params are exact on any machine (a search's result is not: last bits can pick another subnet)."""
        return not registry.searched_upstream(self.plan, stage)

    def fingerprint(self) -> dict[str, Any]:
        """The numerics this process builds with (``numerics.fingerprint``)."""
        from .numerics import fingerprint

        return fingerprint(self.ctx.device)

    def available_stages(self) -> list[str]:
        return [stage.name for stage in self.plan]

    def cached_stages(self) -> list[str]:
        """The stages of this recipe that the cache keeps: all of them."""
        return self.available_stages()

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
        from .checks import check_budgets_can_fail, check_data, check_forward

        ctx = self.ctx
        check_data(ctx, self.path)
        with self._boundary("building the model (model.name, model.options)",
                            fix="check [model]; if the error is raised in your model factory, fix it there"):
            model = ctx.make_model()
        check_forward(ctx, model, self.path)
        for stage in self.plan:
            if stage.kind.preflight is not None:
                stage.kind.preflight(self, stage)
        check_budgets_can_fail(self.recipe, self.bounds, self.path)
        self._preflight_done = True

    def cached_value(self, name: str, material: dict[str, Any], compute: Callable[[], Any]) -> Any:
        """A small JSON-safe value (a search space's bounds) from the cache, else computed under the
        cache's lock and stored; ``material`` plus the baseline's key decide it."""
        if self.cache is None:
            return compute()
        from .keys import digest

        with self._cache_work():
            material = {"name": name, "after": self.keys[self.root_stage()]["key"], **material}
            key = digest(material)
            entry = self.cache.load(name, key)
        if entry is not None:
            return entry.meta["value"]
        with self.cache.lock(name, key, f"the {name} of {self.recipe.name}"):
            entry = self.cache.load(name, key)
            if entry is not None:
                return entry.meta["value"]
            value = compute()
            with self._cache_work():
                self._store(name, key, {}, {"value": value, "recipe": self.recipe.name, "key_material": material})
        return value

    def _store(self, stage: str, key: str, files: dict, meta: dict) -> bool:
        """Store a cache entry; when the disk is full (or the cache unwritable) keep the built artifact,
        which this session goes on using, and say what could not be cached. Returns whether it was."""
        import warnings

        from .cache import CacheWarning

        try:
            self.cache.store(stage, key, files, meta)
            return True
        except OSError as exc:
            message = (f"{self.recipe.name}: the {stage} was built but could not be cached ({exc.strerror or exc}; "
                       f"cache dir {self.cache.root}): this session uses it from memory, the next one rebuilds "
                       "it. Free disk space to cache it.")
            self.log(message)
            warnings.warn(CacheWarning(message), stacklevel=2)
            return False

    @contextlib.contextmanager
    def _cache_work(self):
        """Count the time spent on the cache itself (keys, checksums, copies): its overhead."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.cache_seconds += time.perf_counter() - start

    @property
    def keys(self) -> dict[str, dict[str, Any]]:
        """Content keys of the cacheable stages (``keys.stage_keys``), computed once."""
        if self._keys is None:
            from .keys import stage_keys

            self._keys = stage_keys(self.recipe, self.ctx.data, self.ctx.device, self.seed, self.stage_threads)
        return self._keys

    # -- stages ------------------------------------------------------------------------------------
    def artifact(self, stage: str):
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
        """The stage's artifact from the cache, or built (by this process, or by the one holding
        its lock) and stored."""
        from . import stages

        start = time.perf_counter()
        if self.cache is None:
            artifact = self._build(stage, parent)
            self.events[stage] = {"cache": "off", "key": None, "seconds": self._own(stage, start),
                                  "threads": self.stage_threads.get(stage, self.threads)}
            return artifact
        self.prepare()
        with self._cache_work():
            material = self.keys[stage]
            key = material["key"]
            entry = self.cache.load(stage, key)
        outcome, waited = "hit", 0.0
        if entry is None:
            waiting = time.perf_counter()
            with self.cache.lock(stage, key, f"the {stage} of {self.recipe.name}"):
                waited = time.perf_counter() - waiting
                with self._cache_work():
                    entry = self.cache.load(stage, key)  # built by another worker while we waited?
                if entry is None:
                    artifact = self._build(stage, parent)
                    with self._cache_work():
                        meta = {**stages.entry_meta(artifact), "recipe": self.recipe.name, "key_material": material}
                        stored = self._store(stage, key, artifact.files, meta)
                    self.events[stage] = {"cache": "built" if stored else "built (not cached)", "key": key,
                                          "seconds": self._own(stage, start), "waited": waited,
                                          "threads": self.stage_threads.get(stage, self.threads)}
                    return artifact
                outcome = "hit (built by another process)"
        self.log(f"{self.recipe.name}: {stage} from cache ({self.cache.show(entry.path)})")
        artifact = stages.load_artifact(self.ctx, stage, self.stages[stage].kind, entry.files, entry.meta,
                                        load=lambda: self._load_model(stage, entry, parent))
        self.events[stage] = {"cache": outcome, "key": key, "seconds": self._own(stage, start),
                              "waited": waited}
        return artifact

    def _own(self, stage: str, start: float) -> float:
        """Seconds since ``start`` spent on ``stage`` itself: less the time its build spent obtaining
        (building, loading) the stage it is built from."""
        return time.perf_counter() - start - self._upstream.pop(stage, 0.0)

    def _load_model(self, stage: str, entry, parent):
        """A cached stage's model, when a check first needs it. Checksums matched but the files do not
        load (never a crash): the entry goes to quarantine and the stage is rebuilt; the artifact the
        session holds takes the rebuilt one's model and metrics."""
        from . import stages
        from .quiet import library_noise

        try:
            with library_noise():
                return stages.load_model(self.ctx, self.stages[stage].kind, entry.files)
        except Exception as exc:
            self.cache.quarantine(entry.path, f"it could not be loaded ({type(exc).__name__}: {exc})")
        # built here, not through _obtain: an entry that quarantine could not move would be found again
        with self.cache.lock(stage, entry.key, f"the {stage} of {self.recipe.name}"):
            rebuilt = self._build(stage, parent)
            with self._cache_work():
                meta = {**stages.entry_meta(rebuilt), "recipe": self.recipe.name, "key_material": self.keys[stage]}
                self._store(stage, entry.key, rebuilt.files, meta)
        self.events[stage] = {**self.events.get(stage, {}), "cache": "rebuilt (entry did not load)"}
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
        from .quiet import library_noise
        from .stages import Artifact, architecture_files, load_model

        started = time.perf_counter()
        parent = parent_of()
        self._upstream[stage] = time.perf_counter() - started  # not this stage's time (``_own``)
        self.prepare()
        ctx, plan = self.ctx, self.stages[stage]
        threads = self.stage_threads.get(stage)
        self.log(f"{self.recipe.name}: building {stage}" + (f" ({threads} threads: every recipe needs it)"
                                                             if threads else ""))
        started = time.perf_counter()
        with library_noise(), _torch_threads(threads), self._boundary(f"stage '{stage}', built by {plan.label}",
                            fix="see the cause; if it is raised in your own code (model, dataset), fix it "
                                "there, else run with --fulltrace and report it with that output"):
            above = self.stages[plan.parent] if plan.parent else None
            given = None if parent is None else Artifact(
                parent.stage, None, parent.metrics, parent.path, parent.files, parent.info,
                load=lambda: load_model(ctx, above.kind, parent.files))
            artifact = plan.kind.build(ctx, given, plan.step, self.artifact)
            if parent is not None:  # carried along: its own checkpoint restores into that architecture
                artifact.files = {**architecture_files(parent.files), **artifact.files}
        self.log(f"{self.recipe.name}: built {stage} in {time.perf_counter() - started:.1f} s "
                 f"(test acc {artifact.metrics.test_acc:.2%}, {artifact.metrics.flops:,} FLOPs)")
        return artifact

    def roundtrip(self, stage: str):
        """The stage's checkpoint restored into a freshly built model (``mto.restore`` for a Model
        Optimizer stage), once per session: what a user of the checkpoint gets."""
        if stage not in self._roundtrips:
            from .quiet import library_noise
            from .stages import load_model

            artifact = self.artifact(stage)
            with library_noise():
                self._roundtrips[stage] = load_model(self.ctx, self.stages[stage].kind, artifact.files)
        return self._roundtrips[stage]


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """torch's intra-op thread count set to ``threads`` inside (unchanged for None), restored after."""
    if not threads:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fix_for(exc: BaseException, fix: str, run: "RecipeRun") -> str:
    """A more specific fix for failures whose cause is the machine, not the recipe."""
    import errno

    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = run._ctx.workdir if run._ctx is not None else "the working directory"
        return (f"the disk is full: free space where optcheck writes ({where}, pytest's --basetemp, and the "
                f"cache dir); models already built stay in the cache")
    if isinstance(exc, MemoryError):
        return "out of memory: lower data.batch_size / data.eval_batch_size, or use a smaller model"
    return fix


def stages_of(recipe: Recipe) -> list[str]:
    """The stages a recipe's steps produce, in pipeline order."""
    return [stage.name for stage in registry.plan(recipe)]
