"""pytest collection nodes: a recipe file, one item per budget of its final stage, one collector per
``[budgets.<stage>]`` table (``recipe.toml::<stage>::<budget>``), one item per ledger stage; for a zoo
recipe, one collector per model and one item per phase (``zoo.toml::model[<label>]::<phase>``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from optcheck.core.errors import DatasetMissing, OptcheckError, RecipeError

DISABLED_REASON = "optcheck recipes run only with --optcheck (pytest --optcheck)"


class RecipeFile(pytest.File):
    """``recipes/<name>.toml``: its schema validated at collection (nothing imported, built or loaded:
    collection also runs under ``--co``, on every xdist worker, and for deselected recipes), then one
    ``BudgetItem`` per budget and one ``LedgerItem`` per stage (when the regression ledger is on). The
    checks before training (``RecipeRun.preflight``) run when the first of its items is set up."""

    def collect(self):
        from optcheck.budgets.judges import budget_id
        from optcheck.pipeline.run import stages_of
        from optcheck.recipes.loader import load_any
        from optcheck.plugin.session import get_state
        from optcheck.recipes.zoo import ZooRecipe

        state = get_state(self.config)
        try:
            recipe = load_any(self.path)
        except RecipeError as exc:
            state.bad_recipes.add(self.nodeid)
            exc.path = self.nodeid.split("::")[0]  # as pytest shows it: relative to the rootdir
            raise self.CollectError(str(exc)) from None
        if isinstance(recipe, ZooRecipe):
            yield from self._zoo(recipe, state)
            return
        if state.enabled:
            from optcheck.build.on_disk import data_missing

            run, skip_reason = state.run_for(recipe), data_missing(recipe)  # a file check, no import
        else:
            run, skip_reason = None, DISABLED_REASON
        items: list[pytest.Node] = [BudgetItem.from_parent(self, name=b, check=budget_id(None, b), budget=(None, b),
                                                           run=run) for b in recipe.budgets.active()]
        items += [StageBudgetsNode.from_parent(self, name=stage, run=run) for stage in recipe.budgets.stages]
        if recipe.properties is not None:  # first: they need no stage, so they run while another worker trains
            items[:0] = [PropertyItem.from_parent(self, name=f"property[{c}]", check=f"property[{c}]", prop=c,
                                                  run=run) for c in recipe.properties.checks]
        if state.ledger is not None:
            for stage in stages_of(recipe):
                items.append(LedgerItem.from_parent(self, name=f"ledger[{stage}]", check=f"ledger[{stage}]",
                                                    stage=stage, run=run))
        items += [GoldenItem.from_parent(self, name=f"golden[{stage}]", check=f"golden[{stage}]", stage=stage, run=run)
                  for stage in recipe.golden]
        for item in items:
            item.add_marker(pytest.mark.xdist_group(f"optcheck-{recipe.name}"))
            if skip_reason:
                item.add_marker(pytest.mark.skip(reason=skip_reason))
            yield item


    def _zoo(self, recipe, state):
        try:
            cases = recipe.cases()
        except Exception as exc:  # noqa: BLE001 - torchvision:* needs torchvision
            state.bad_recipes.add(self.nodeid)
            raise self.CollectError(f"{self.nodeid}: zoo.models: cannot list the models ({type(exc).__name__}: "
                                    f"{exc})\n  fix: install torchvision, or name the models") from None
        for index, case in enumerate(cases):
            node = ZooModelNode.from_parent(self, name=f"model[{case.label}]", recipe=recipe, case=case, index=index)
            if not state.enabled:
                node.add_marker(pytest.mark.skip(reason=DISABLED_REASON))
            yield node


class ZooModelNode(pytest.Collector):
    """``zoo.toml::model[<label>]``: one model of a zoo recipe, one item per phase. Under xdist a
    model's items stay on one worker (``schedule.recipe_scope``): each phase needs the ones before."""

    def __init__(self, *, recipe: Any, case: Any, index: int, **kwargs):
        super().__init__(**kwargs)
        self.recipe, self.case, self.index = recipe, case, index

    def collect(self):
        for phase in self.recipe.phases:
            item = ZooPhaseItem.from_parent(self, name=phase, check=f"{self.name}::{phase}", run=None,
                                            recipe=self.recipe, case=self.case, phase=phase)
            item.user_properties.append(("optcheck.zoo_index", self.index))  # the matrix's row order
            yield item


class KnownFailureHit(AssertionError):
    """A phase failed as its known-failure ledger entry says (the only failure its xfail accepts)."""


class StageBudgetsNode(pytest.Collector):
    """``recipes/<name>.toml::<stage>``: the budgets of one ``[budgets.<stage>]`` table."""

    def __init__(self, *, run: Any, **kwargs):
        super().__init__(**kwargs)
        self.run = run

    def collect(self):
        from optcheck.budgets.judges import budget_id
        from optcheck.recipes.loader import load_recipe

        recipe = self.run.recipe if self.run is not None else load_recipe(self.path)
        for b in recipe.budgets.table(self.name).active():
            yield BudgetItem.from_parent(self, name=b, check=budget_id(self.name, b), budget=(self.name, b),
                                         run=self.run)


def buildable_recipes(items) -> list:
    """The recipes with an item that will run (not skipped, e.g. for missing data), in order."""
    out: dict[str, Any] = {}
    for item in items:
        if isinstance(item, _CheckItem) and item.get_closest_marker("skip") is None and item.run is not None:
            out.setdefault(str(item.path), item.run.recipe)
    return list(out.values())


class ReportOnlyBreach(UserWarning):
    """A budget listed in ``budgets.report_only`` is broken: reported, not failed."""


class _CheckItem(pytest.Item):
    def __init__(self, *, check: str, run: Any, **kwargs):
        super().__init__(**kwargs)
        self.check = check
        self.run = run
        # reports (and xdist) carry these to the process that writes the summary and JUnit XML
        # the same key the session files the recipe's stages under (a path relative to the rootdir,
        # absolute outside it): a node id would differ for a recipe outside the rootdir
        from optcheck.plugin.session import get_state

        self.user_properties.append(("optcheck.recipe", get_state(self.config).relpath(self.path)))
        self.user_properties.append(("optcheck.check", check))

    def prepare(self) -> None:
        """The recipe's checks before training, once per run (``RecipeRun.prepare``), when the item
        runs (not at setup: pytest shows a setup error with its whole traceback): a missing dataset
        skips, a bad recipe or a failed check fails this item (the first with the whole error, the
        others in one line)."""
        try:
            self.run.prepare()
        except DatasetMissing as exc:
            pytest.skip(str(exc))

    def verdict(self, key: str | None, judge: Callable[[dict[str, Any]], None], measured: dict[str, Any],
                on_replay: Callable[[], None] = lambda: None) -> None:
        """Replay the verdict stored under ``key`` when the cache has it (nothing it depends on changed:
        ``budgets.verdicts``), else ``judge(measured)`` live and keep its verdict. ``measured`` is filled
        by the judge, also when it fails, and by the replay (with ``verdict_cache = "hit"``)."""
        from optcheck.budgets import verdicts

        stored = verdicts.replay(self.run.store, key) if key else None
        if stored is not None:
            on_replay()
            measured.update(stored["measured"], verdict_cache="hit")
            self.run.log(f"{self.run.recipe.name}: {self.check} {stored['outcome']} (verdict from the cache; "
                         "--optcheck-rebuild judges it again)")
            if stored["outcome"] == "failed":
                raise AssertionError(stored["message"])
            return
        try:
            judge(measured)
        except AssertionError as exc:
            if key:
                verdicts.store(self.run.store, key, "failed", dict(measured), str(exc))
            raise
        if key:
            verdicts.store(self.run.store, key, "passed", dict(measured))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, (AssertionError, OptcheckError)) and not self.config.getoption("fulltrace"):
            # paths as pytest shows them: relative to the rootdir
            return str(excinfo.value).replace(str(self.path), self.nodeid.split("::")[0])
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        # not a suffix of the node id, so pytest prints node ids untouched and this as the headline
        return self.path, 0, f"{self.check} ({self.path.name})"


class BudgetItem(_CheckItem):
    """``recipes/<name>.toml::<budget>`` (the final stage) or ``recipes/<name>.toml::<stage>::<budget>``:
    passes when that stage meets that budget."""

    def __init__(self, *, budget: tuple[str | None, str], **kwargs):
        super().__init__(**kwargs)
        self.budget = budget
        from optcheck.recipes.budget_schema import LATENCY_BUDGETS

        if budget[1] in LATENCY_BUDGETS:
            # what pytest-benchmark looks at: --benchmark-skip skips this item, --benchmark-only keeps it
            self.fixturenames = ["benchmark"]

    def runtest(self) -> None:
        from optcheck.plugin.session import get_state

        state = get_state(self.config)
        bench = self._benchmark() if getattr(self, "fixturenames", None) else None
        self.prepare()
        measured: dict[str, Any] = {}  # filled before an accuracy budget judges: kept when it fails
        from optcheck.core.quiet import library_noise

        try:
            with library_noise():
                self._judge(state, measured, bench)
        except AssertionError as exc:
            stage, name = self.budget
            if name not in getattr(self.run.recipe.budgets.table(stage), "report_only", []):
                raise
            # listed in budgets.report_only: measured and reported, never a failure (said out loud)
            import warnings

            measured["report_only"] = "broken"
            warnings.warn(ReportOnlyBreach(f"report-only budget {self.check} of {self.path.name} is broken "
                                           f"(not judged: budgets.report_only):\n{exc}"), stacklevel=1)
        finally:
            for key, value in measured.items():
                self.user_properties.append((f"optcheck.{key}", value))


    def _benchmark(self):
        """A latency budget's pytest-benchmark fixture, built as pytest-benchmark's ``benchmark`` fixture
        builds it (its session's timer and options; its table and JSON get the series). Under an
        explicit ``--benchmark-disable`` the budget skips, saying why (under xdist, where pytest-benchmark
        disables itself, it still measures: ``latency.engine_of``)."""
        from optcheck.checks.latency import LatencyOff, engine_of
        from optcheck.core.private_api import benchmark_fixture, benchmark_session

        bs = benchmark_session(self.config)
        if bs is None:
            return None
        bench = benchmark_fixture(self, bs)

        try:
            engine_of(bench)
        except LatencyOff as exc:  # reported at the recipe's item, not at this line
            raise pytest.skip.Exception(str(exc), _use_item_location=True) from None
        return bench

    def _live_only(self, bench) -> bool:
        """A latency verdict is measured again when pytest-benchmark is asked for output (its JSON, a
        saved run, a comparison, a histogram): a replayed verdict would leave that output empty."""
        from optcheck.core.private_api import benchmark_session

        bs = benchmark_session(self.config)
        return bench is not None and bs is not None and bool(bs.json or bs.save or bs.autosave or bs.compare
                                                             or bs.histogram)

    def _judge(self, state, measured: dict[str, Any], bench=None) -> None:
        """Judge the budget (``budgets.judges.check_budget``), or replay its stored verdict."""
        from optcheck.budgets import verdicts
        from optcheck.budgets.judges import check_budget

        runs = state.seed_runs_for(self.run.recipe) if self.run.recipe.seeds else [self.run]
        live = self.run.store is None or self._live_only(bench)
        key = None if live else verdicts.verdict_key(runs, self.budget)
        ship = self._live_only(bench) and bool(getattr(self.config, "workerinput", None))

        def judge(m: dict[str, Any]) -> None:
            m.update(check_budget(self.budget, self.run, lambda: runs, record=m, benchmark=bench, ship_series=ship))

        def metrics_for_the_table() -> None:  # the stages' metrics, from the cache (no model loaded)
            for stage in self.run.available_stages():
                self.run.artifact(stage)

        self.verdict(key, judge, measured, on_replay=metrics_for_the_table)


class PropertyItem(_CheckItem):
    """``recipes/<name>.toml::property[<check>]``: a property of every subnet of the recipe's FastNAS search
    space (``[properties]``; ``optcheck.properties``), checked by Hypothesis on drawn subnets. A failure
    shows the shrunk subnet; its example database lives in the artifact cache (``hypothesis/``), so the
    next run tries that subnet first. The verdict is kept like a budget's (``verdicts.py``)."""

    def __init__(self, *, prop: str, **kwargs):
        super().__init__(**kwargs)
        self.prop = prop

    def runtest(self) -> None:
        from optcheck.budgets.properties import for_recipe, verdict_material
        from optcheck.core.quiet import library_noise
        from optcheck.core.hashing import digest

        self.prepare()
        run = self.run
        key = digest(verdict_material(self.prop, run)) if run.store is not None else None
        database = None if run.cache is None else run.cache.root / "hypothesis"

        def judge(m: dict[str, Any]) -> None:
            run.log(f"{run.recipe.name}: checking {self.prop} on {run.recipe.properties.examples} subnets")
            try:
                with library_noise():
                    got = for_recipe(self.prop, run, database)
            except AssertionError as exc:
                m["examples"] = getattr(getattr(exc, "run", None), "examples", None)
                raise
            m.update(examples=got.examples, seconds=round(got.seconds, 3), subnets=got.search_space_size,
                     examples_per_second=round(got.examples_per_second, 3) if got.seconds > 0 else None)

        measured: dict[str, Any] = {}
        try:
            self.verdict(key, judge, measured)
        finally:
            self.user_properties.extend((f"optcheck.{k}", v) for k, v in measured.items())


class ZooPhaseItem(_CheckItem):
    """``zoo.toml::model[<label>]::<phase>``: the phase passes on that model (``zoo.py``). Runs the
    model's earlier phases first when they have not run in this process. A known failure recorded in
    the regression ledger xfails (strict: the day it passes, the run fails and says to remove it)."""

    def __init__(self, *, recipe: Any, case: Any, phase: str, **kwargs):
        super().__init__(**kwargs)
        self.recipe, self.case, self.phase = recipe, case, phase
        self.user_properties += [("optcheck.zoo_model", case.name), ("optcheck.zoo_label", case.label),
                                 ("optcheck.zoo_phase", phase), ("optcheck.zoo_input", case.input_size),
                                 ("optcheck.zoo_recipe", recipe.name)]

    def setup(self) -> None:
        from optcheck.plugin.session import get_state
        from optcheck.zoo.session import known_failure

        state = get_state(self.config)
        self.known = known_failure(state.ledger, self.recipe.name, self.case.label, self.phase)
        if self.known is not None and state.update != "all":
            where = f"[{self.recipe.name}.cpu.{self.case.label}] in {state.ledger.display}"
            self.add_marker(pytest.mark.xfail(
                reason=f"known failure {self.known.ticket}: {self.known.reason} ({where}); if it passes, it was fixed upstream: remove "
                       "that entry and close the ticket", strict=True, raises=KnownFailureHit))

    def runtest(self) -> None:
        from optcheck.plugin.session import get_state
        from optcheck.zoo.results import FAILED, NOT_RUN, XFAILED, ModelResult, classify

        state = get_state(self.config)
        zoo = state.zoo_session()
        stepper = zoo.stepper(self.recipe, self.case)
        result = stepper.run_until(self.phase)
        if getattr(stepper, "cached", False):
            self.user_properties.append(("optcheck.verdict_cache", "hit"))
        else:
            zoo.finished(self.recipe, self.case, stepper)
        self.user_properties.append(("optcheck.seconds", round(result.seconds, 3)))
        if result.details:
            self.user_properties.append(("optcheck.zoo_details", result.as_dict().get("details")))
        if result.status == NOT_RUN:
            raise pytest.skip.Exception(f"{self.case.label}: {result.message}", _use_item_location=True)
        if result.status != FAILED:
            return
        single = ModelResult(self.case, [result], result.seconds, self.recipe.seed)
        verdict = classify([single], [self.known] if self.known else [])[0]
        text = f"{self.case.name} {self.phase} failed: {verdict.message}"
        if verdict.outcome == XFAILED:
            raise KnownFailureHit(text)
        raise AssertionError(text if self.known else f"{self.case.name} {self.phase} failed: {result.error}\n"
                                                     f"  fix: {result.hint}")


class LedgerItem(_CheckItem):
    """``recipes/<name>.toml::ledger[<stage>]``: the stage's metrics equal the committed ledger's."""

    def __init__(self, *, stage: str, **kwargs):
        super().__init__(**kwargs)
        self.stage = stage

    def setup(self) -> None:
        from optcheck.plugin.session import get_state
        from optcheck.build.training import resolve_device

        state = get_state(self.config)
        entry = state.ledger.entry(self.run.recipe.name, resolve_device(self.run.device_name).type, self.stage)
        if entry and "known_failure" in entry and state.update != "all":  # an accepted, ticketed failure
            self.add_marker(pytest.mark.xfail(reason=entry["known_failure"], strict=True, raises=AssertionError))

    def runtest(self) -> None:
        from optcheck.ledger.entries import judge
        from optcheck.plugin.session import get_state

        state = get_state(self.config)
        self.prepare()
        run = self.run
        measured = run.artifact(self.stage).metrics.as_dict()
        platform = run.ctx.device.type
        verdict = judge(state.ledger, run.recipe, platform, self.stage, measured, state.update,
                        exact_architecture=run.fixed_architecture(self.stage), fingerprint=run.fingerprint())
        from optcheck.ledger.entries import team_metrics

        measured = {**measured, **(measured.get("extra") or {})}
        details = verdict.details(measured, team_metrics(run.recipe))
        state.ledger_checks.setdefault(state.relpath(run.recipe.path), {})[self.stage] = {
            **details, "platform": platform, "failure": verdict.failure}
        if verdict.update is not None:
            state.ledger_updates[(run.recipe.name, platform, self.stage)] = verdict.update
        for metric, value in details["measured"].items():
            self.user_properties.append((f"optcheck.{self.stage}.{metric}", value))
            if details["reference"]:
                self.user_properties.append((f"optcheck.{self.stage}.{metric}.ledger", details["reference"][metric]))
        if verdict.failure:
            raise AssertionError(verdict.failure)


class GoldenItem(_CheckItem):
    """``recipes/<name>.toml::golden[<stage>]``: the stage's committed golden checkpoint restores with
    today's stack and reproduces its recorded logits (``ledger.golden``). Never replayed from the cache:
    what it judges is the installed stack."""

    def __init__(self, *, stage: str, **kwargs):
        super().__init__(**kwargs)
        self.stage = stage

    def setup(self) -> None:
        import json

        from optcheck.pipeline.golden import META, folder_for
        from optcheck.plugin.session import get_state

        if self.run is None or get_state(self.config).update == "all":
            return
        try:
            meta = json.loads((folder_for(self.run.recipe, self.stage) / META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # missing or unreadable: runtest says so
        if isinstance(meta, dict) and meta.get("known_failure"):  # an accepted, ticketed failure
            self.add_marker(pytest.mark.xfail(reason=str(meta["known_failure"]), strict=True, raises=AssertionError))

    def runtest(self) -> None:
        from functools import partial

        from optcheck.core.quiet import library_noise
        from optcheck.ledger.golden import judge, measure_tolerance
        from optcheck.plugin.session import get_state

        state = get_state(self.config)
        self.prepare()
        measure = partial(measure_tolerance, rootdir=self.config.rootpath,
                          import_paths=tuple(str(p) for p in self.config.getini("pythonpath")))
        with library_noise():
            verdict = judge(self.run, self.stage, state.update, measure=measure, display=state.relpath)
        for key, value in verdict.details.items():
            self.user_properties.append((f"optcheck.golden.{key}", value))
        if verdict.failure:
            raise AssertionError(verdict.failure)

