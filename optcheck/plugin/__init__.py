"""The pytest plugin: options, markers, recipe collection, fixtures and the results summary.

Wiring only; every hook hands off to a module that does the work. Nothing here imports torch or
modelopt at load time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from optcheck.plugin.session import STATE_KEY, OptcheckState, get_state, make_basetemp


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("optcheck", "compression budgets (optcheck)")
    group.addoption("--optcheck", action="store_true", default=False,
                    help="run optcheck recipes and enable the recipe-driven fixtures")
    group.addoption("--optcheck-recipes", action="append", default=None, metavar="PATH",
                    help="recipe file or folder (repeatable); replaces the optcheck_recipes ini value")
    group.addoption("--optcheck-device", choices=("auto", "cpu", "cuda"), default=None,
                    help="device for training and evaluation (default: ini optcheck_device, else auto)")
    group.addoption("--optcheck-seed", type=int, default=None, metavar="N",
                    help="seed for every recipe, overriding the recipe's own (default: ini optcheck_seed)")
    group.addoption("--optcheck-cache-dir", default=None, metavar="DIR",
                    help="artifact cache (default: ini optcheck_cache_dir, else .optcheck/cache under the rootdir)")
    group.addoption("--optcheck-no-cache", action="store_true", default=False,
                    help="build every artifact; neither read nor write the cache")
    group.addoption("--optcheck-rebuild", action="store_true", default=False,
                    help="rebuild the artifacts this session needs and replace their cache entries; keep the rest")
    group.addoption("--optcheck-lock-timeout", type=float, default=None, metavar="SECONDS",
                    help="how long to wait for another process building the same artifact (default 3600)")
    group.addoption("--optcheck-threads", default=None, metavar="N|auto",
                    help="torch threads per process (default: ini optcheck_threads; auto = cores / xdist workers)")
    group.addoption("--optcheck-ledger", default=None, metavar="PATH|off",
                    help="regression ledger file (default: ini optcheck_ledger, else optcheck-ledger.toml in "
                         "the first recipe folder); off disables the ledger checks")
    group.addoption("--optcheck-update", action="store_const", const="failed", dest="optcheck_update",
                    default=None, help="write failed or missing ledger entries (those checks still fail)")
    group.addoption("--optcheck-update-all", action="store_const", const="all", dest="optcheck_update",
                    help="accept every measured value into the ledger (the checks pass)")
    group.addoption("--optcheck-calibrate", type=int, default=None, metavar="N",
                    help="before the checks, rebuild each selected recipe under N variants (seeds, CPU "
                         "kernel paths, thread counts; one subprocess each) and write the measured "
                         "ranges and tolerances into the ledger (8 or more recommended)")
    group.addoption("--optcheck-shard", default=None, metavar="K/N",
                    help="run only the K-th of N shards (1 <= K <= N): recipe files and zoo models dealt "
                         "round-robin in collection order, the same split on every machine; merge the shards' "
                         "--optcheck-report files with python -m optcheck.merge")
    group.addoption("--optcheck-report", default=None, metavar="PATH",
                    help="write a JSON report: machine, versions, git commit, metrics, verdicts, cache hits")
    group.addoption("--optcheck-plot", default=None, metavar="PATH",
                    help="write a PNG of accuracy against FLOPs for every recipe (needs matplotlib)")
    parser.addini("optcheck_recipes", "recipe files or folders, relative to the rootdir",
                  type="paths", default=[])
    parser.addini("optcheck_device", "auto, cpu or cuda", default="auto")
    parser.addini("optcheck_seed", "seed for recipes that set none", default="0")
    parser.addini("optcheck_cache_dir", "artifact cache directory, relative to the rootdir", default=".optcheck/cache")
    parser.addini("optcheck_threads", "torch threads per process: a number, or auto (cores / xdist workers)",
                  default="auto")
    parser.addini("optcheck_ledger", "regression ledger file relative to the rootdir, or off", default="")


def _recipe_roots(config: pytest.Config) -> list[Path]:
    given = config.getoption("optcheck_recipes")
    if given:
        return [Path(p) if Path(p).is_absolute() else config.invocation_params.dir / p for p in given]
    return [Path(p) for p in config.getini("optcheck_recipes")] or [config.rootpath / "recipes"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "optcheck_recipe(path): the recipe the optcheck fixtures of this test use")
    if config.getoption("optcheck_shard"):
        from optcheck.plugin.schedule import parse_shard

        parse_shard(config.getoption("optcheck_shard"))  # a usage error before anything is collected
    device = config.getoption("optcheck_device") or config.getini("optcheck_device")
    if device not in ("auto", "cpu", "cuda"):
        raise pytest.UsageError(f"optcheck_device = {device!r} in the ini file: use auto, cpu or cuda")
    from optcheck.recipes.fields import SEED_MAX

    try:
        default_seed = int(config.getini("optcheck_seed"))
    except ValueError:
        raise pytest.UsageError(f"optcheck_seed = {config.getini('optcheck_seed')!r} in the ini file: use an integer") from None
    for where, seed in (("optcheck_seed in the ini file", default_seed),
                        ("--optcheck-seed", config.getoption("optcheck_seed"))):
        if seed is not None and not 0 <= seed <= SEED_MAX:
            raise pytest.UsageError(f"{where} = {seed}: use an integer in [0, {SEED_MAX}] (scikit-learn's "
                                    "random_state range; the val split uses seed + 1)")
    if config.getoption("optcheck") and device == "cuda":
        import torch  # only here: --optcheck asked for CUDA explicitly

        if not torch.cuda.is_available():
            raise pytest.UsageError("--optcheck-device=cuda, but torch.cuda.is_available() is False on "
                                    "this machine: use --optcheck-device=cpu or auto")
    state = OptcheckState(enabled=config.getoption("optcheck"), device=device,
                          seed=config.getoption("optcheck_seed"), default_seed=default_seed,
                          basetemp=make_basetemp(config), log=_progress_logger(config),
                          rootdir=config.rootpath, update=config.getoption("optcheck_update"))
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        state.worker = workerinput.get("workerid", "gw?")
    config.stash[STATE_KEY] = state
    config.pluginmanager.register(_CollectWatcher(state, config), "optcheck-collect-watcher")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistController(state), "optcheck-xdist")
    roots = [r.resolve() for r in _recipe_roots(config)]
    if state.enabled:
        _check_roots(config, roots)
    # a .toml named on the command line is a recipe the user asked to run, wherever it lives
    named = {(config.invocation_params.dir / arg.split("::")[0]).resolve() for arg in config.args
             if arg.split("::")[0].endswith(".toml")}
    roots += sorted(p for p in named if p.is_file() and not any(_inside(p, r) for r in roots))
    config.stash[_ROOTS] = roots
    if state.enabled:
        from optcheck.plugin.settings import open_cache, open_ledger, threads_setting

        state.threads, state.threads_auto = threads_setting(config)
        state.cache, state.cache_note = open_cache(config, state)
        state.ledger = open_ledger(config, roots)
        config.stash[_LEDGER_PATH] = state.ledger.path.resolve() if state.ledger else None
    # `--optcheck-recipes PATH`, or `--optcheck` with no paths on the command line: collect the
    # recipes as well as whatever else pytest collects.
    explicit = config.args_source == pytest.Config.ArgsSource.ARGS
    if state.enabled and (config.getoption("optcheck_recipes") or not explicit):
        for root in roots:
            if root.exists() and not any(_inside(root, Path(a).resolve()) for a in _arg_paths(config)):
                config.args.append(str(root))


def _check_roots(config: pytest.Config, roots: list[Path]) -> None:
    """Recipe paths given by ``--optcheck-recipes`` or the ini file must exist: a typo would otherwise
    run no recipe at all and pass (exit 0 beside other tests)."""
    import difflib

    given = config.getoption("optcheck_recipes")
    if not given and not config.getini("optcheck_recipes"):
        return  # the default recipes/ folder: optional
    source = "--optcheck-recipes" if given else "optcheck_recipes in the ini file"
    for root in roots:
        if root.exists():
            continue
        parent = root.parent
        near = difflib.get_close_matches(root.name, [p.name for p in parent.iterdir()], n=1) if parent.is_dir() else []
        hint = f"did you mean {parent / near[0]}?" if near else "check the path (relative to the current directory)"
        raise pytest.UsageError(f"{source}: {root} does not exist; {hint}")


_ROOTS = pytest.StashKey[list]()
_LEDGER_PATH = pytest.StashKey[object]()


def _arg_paths(config: pytest.Config) -> list[str]:
    return [a.split("::")[0] for a in config.args]


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _progress_logger(config: pytest.Config):
    """Where progress lines go: the terminal (serial, or the xdist controller), or on an xdist worker
    the file the controller's relay prints from (``progress.py``). ``-q`` keeps it quiet."""
    from optcheck.plugin.terminal import file_writer, terminal_writer

    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        folder = workerinput.get("optcheck_progress")
        if not folder:
            return lambda _m: None
        return file_writer(Path(folder), workerinput.get("workerid", "gw?"))
    write = terminal_writer(config)

    def log(message: str) -> None:
        if config.get_verbosity() >= 0:
            write(f"[optcheck] {message}")

    return log


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.suffix != ".toml":
        return None
    from optcheck.plugin.settings import LEDGER_NAME

    if file_path.name == LEDGER_NAME:
        return None  # a regression ledger is never a recipe, even with --optcheck-ledger off
    config = parent.config
    resolved = file_path.resolve()
    ledgers = {config.stash.get(_LEDGER_PATH, None)}  # the ledger in use, when it is on
    ini = str(config.getini("optcheck_ledger") or "").strip()
    if ini and ini.lower() != "off":  # the configured one, which the option may have switched off
        ledgers.add((Path(ini) if Path(ini).is_absolute() else config.rootpath / ini).resolve())
    if resolved in ledgers:
        return None  # the regression ledger lives next to the recipes but is not one
    if any(_inside(resolved, root) for root in config.stash.get(_ROOTS, [])):
        from optcheck.plugin.items import RecipeFile

        return RecipeFile.from_parent(parent, path=file_path)
    return None


class _CollectWatcher:
    """Remembers which nodes failed to collect (for ``pytest_runtestloop`` below) and the outcome of
    every optcheck check (on the xdist controller: from the reports the workers send)."""

    def __init__(self, state: OptcheckState, config: pytest.Config):
        self.state, self.config = state, config

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.state.collect_failures.add(report.nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if "optcheck.check" not in props:
            return
        if report.when != "call" and not (report.failed or report.skipped):
            return
        from optcheck.plugin.results import benchmark_series, verdict_of

        self.state.record_verdict(props["optcheck.recipe"], props["optcheck.check"], verdict_of(report, props))
        if report.when == "call" and not hasattr(self.config, "workerinput"):
            benchmark_series(self.config, props)  # a worker's timed series, for pytest-benchmark's JSON


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """A broken recipe is one collection error, not the end of the session: when every collection
    error comes from a recipe file, the other recipes and tests still run (exit status stays 1)."""
    state = session.config.stash.get(STATE_KEY, None)
    if state is None or not session.testsfailed or not state.bad_recipes:
        return
    if state.collect_failures and state.collect_failures <= state.bad_recipes:
        session.config.option.continue_on_collection_errors = True


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under ``-n N`` with --optcheck: one recipe's items on one worker (``schedule.py``), unless the
    command line chose a ``--dist`` mode itself."""
    from optcheck.plugin.schedule import explicit_dist, make_scheduler

    state = config.stash.get(STATE_KEY, None)
    if state is None or not state.enabled or config.getoption("dist", "load") != "load":
        return None
    if explicit_dist(list(config.invocation_params.args)):
        return None
    return make_scheduler(config, log)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items) -> None:
    """On an xdist worker with ``auto`` threads: the recipes that will build are known now (threads per
    worker and per shared stage: ``schedule``). Under xdist, pytest-benchmark's warning that benchmarks
    are disabled is withheld when its only "benchmarks" are optcheck's latency checks: they measure
    there anyway, say so in their results, and their series reach pytest-benchmark's JSON through the
    controller (``results.benchmark_series``)."""
    shard = config.getoption("optcheck_shard")
    if shard:
        from optcheck.plugin.schedule import parse_shard, shard_items

        keep, drop = shard_items(items, *parse_shard(shard))
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
    from optcheck.core.private_api import benchmark_session

    bs = benchmark_session(config)
    if bs is not None and getattr(bs, "xdist_benchmark_found", False):
        from optcheck.plugin.items import _CheckItem

        if all(isinstance(i, _CheckItem) for i in items if "benchmark" in getattr(i, "fixturenames", ())):
            bs.xdist_benchmark_found = False
    state = config.stash.get(STATE_KEY, None)
    if state is None or not state.enabled or not state.threads_auto:
        return
    from optcheck.plugin.items import buildable_recipes

    state.retune_threads(buildable_recipes(items))


class _XdistController:
    """On the xdist controller: relay the workers' progress while they run, and receive each
    worker's results when it shuts down."""

    def __init__(self, state: OptcheckState):
        self.state = state
        self.relay = None

    def pytest_configure_node(self, node) -> None:
        config = node.config
        if not self.state.enabled or config.get_verbosity() < 0:
            return
        if self.relay is None:
            from optcheck.plugin.terminal import Relay, terminal_writer

            folder = self.state.basetemp("optcheck-progress") if self.state.basetemp else None
            if folder is None:
                return
            self.relay = Relay(folder, terminal_writer(config))
            self.relay.start()
        node.workerinput["optcheck_progress"] = str(self.relay.folder)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session) -> None:
        if self.relay is not None:
            self.relay.stop()

    def pytest_testnodedown(self, node, error) -> None:
        part = getattr(node, "workeroutput", {}).get("optcheck")
        if part:
            self.state.remote.append(part)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """``--optcheck-calibrate N``: measure tolerances and write the ledger before anything is
    collected (on the xdist controller, before the workers start and read the ledger)."""
    config = session.config
    state = config.stash.get(STATE_KEY, None)
    count = config.getoption("optcheck_calibrate")
    if state is None or not state.enabled or count is None or hasattr(config, "workerinput"):
        return
    from optcheck.plugin.settings import calibrate_session

    calibrate_session(config, state, config.stash[_ROOTS], count)


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(STATE_KEY, None)
    if state is None or not state.enabled:
        return
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller writes everything
        from optcheck.plugin.results import export

        workeroutput["optcheck"] = export(state)
        return
    from optcheck.plugin.finish import finish_session

    session.config.stash[_WRITTEN] = finish_session(session.config, state)


_WRITTEN = pytest.StashKey[list]()


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    state = config.stash.get(STATE_KEY, None)
    if state is None or not state.enabled:
        return
    from optcheck.report.render import terminal_lines

    lines = terminal_lines(state, config.stash.get(_WRITTEN, []))
    if lines:
        terminalreporter.section("optcheck results")
        for line in lines:
            terminalreporter.write_line(line)


# -- fixtures: defined in fixtures.py (they name stages), offered by this plugin -----------------------

from optcheck.plugin.fixtures import (finetuned_model, optcheck_artifacts, optcheck_recipe, optcheck_run, pruned_subnet, restored_model, trained_baseline)  # noqa: E402,F401
