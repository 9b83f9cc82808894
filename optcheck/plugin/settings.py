"""Turn the command line and ini values into the session's cache, ledger and thread count.

Called from ``pytest_configure`` only when ``--optcheck`` is given; imports no torch.
"""

from __future__ import annotations

import tomllib
import uuid
from pathlib import Path

import pytest

LEDGER_NAME = "optcheck-ledger.toml"


class ThreadsWarning(UserWarning):
    """More torch threads asked for than there are cores for the xdist workers together."""


def threads_setting(config: pytest.Config) -> tuple[int | None, bool]:
    """``(threads, auto)``: the thread count to start with, and whether it is ``auto`` (then an xdist
    worker re-decides it after collection: ``OptcheckState.retune_threads``)."""
    from optcheck.plugin.schedule import oversubscribed, worker_threads

    value = str(config.getoption("optcheck_threads") or config.getini("optcheck_threads")).strip()
    if value != "auto" and not (value.isdigit() and int(value) > 0):
        raise pytest.UsageError(f"optcheck threads = {value!r}: use a whole number > 0, or auto "
                                f"(--optcheck-threads or the optcheck_threads ini value)")
    if value != "auto" and not hasattr(config, "workerinput"):  # said once, by the controller
        workers = len(config.getoption("tx", None) or []) if config.getoption("dist", "no") != "no" else 0
        warning = oversubscribed(int(value), workers)
        if warning:
            config.issue_config_time_warning(ThreadsWarning(warning), stacklevel=2)
    return worker_threads(value), value == "auto"


def open_cache(config: pytest.Config, state):
    """``(ArtifactCache | None, note)``. An unwritable directory is not an error: the session runs
    without a cache and says so in a warning and in the summary."""
    from optcheck.pipeline.cache import ArtifactCache, CacheWarning

    if config.getoption("optcheck_no_cache"):
        return None, "off (--optcheck-no-cache)"
    given = config.getoption("optcheck_cache_dir")
    raw = given or config.getini("optcheck_cache_dir")
    base = config.invocation_params.dir if given else config.rootpath
    root = Path(raw) if Path(raw).is_absolute() else base / raw
    workerinput = getattr(config, "workerinput", None)
    session = workerinput.get("testrunuid") if workerinput else None
    timeout = config.getoption("optcheck_lock_timeout")
    cache, why = ArtifactCache.open(root, rebuild=config.getoption("optcheck_rebuild"),
                                    session=session or uuid.uuid4().hex,
                                    lock_timeout=3600.0 if timeout is None else timeout,
                                    log=state.log, display_root=raw)
    if cache is None:
        config.issue_config_time_warning(CacheWarning(
            f"optcheck cache directory {raw} cannot be written ({why}): this session runs without a "
            f"cache and builds every artifact. Fix the permissions, or point --optcheck-cache-dir "
            f"(ini optcheck_cache_dir) at a writable folder."), stacklevel=2)
        return None, f"off: {raw} is not writable ({why})"
    mode = ", rebuilding what this session needs" if cache.rebuild else ""
    return cache, f"{raw}{mode}"


def ledger_path(config: pytest.Config, roots: list[Path]) -> Path | None:
    given = config.getoption("optcheck_ledger")
    raw = given or config.getini("optcheck_ledger")
    if raw.strip().lower() == "off":
        return None
    if raw:
        base = config.invocation_params.dir if given else config.rootpath
        return Path(raw) if Path(raw).is_absolute() else base / raw
    first = next((r for r in roots if r.is_dir()), roots[0] if roots else config.rootpath)
    return (first if first.is_dir() else first.parent) / LEDGER_NAME


def open_ledger(config: pytest.Config, roots: list[Path]):
    """The validated ledger, or None when it is off. A broken ledger is a usage error: nothing runs,
    so nothing can overwrite it."""
    from optcheck.ledger.entries import LedgerError, load_ledger

    path = ledger_path(config, roots)
    if path is None:
        return None
    try:
        display = path.resolve().relative_to(config.rootpath.resolve()).as_posix()
    except ValueError:
        display = str(path)
    try:
        return load_ledger(path, known_recipe_names(roots, path), display, metrics=recipe_metric_names(roots, path))
    except LedgerError as exc:
        raise pytest.UsageError(str(exc)) from None


def known_recipe_names(roots: list[Path], ledger: Path) -> dict[str, set[str] | None]:
    """Name -> stage names of every recipe file under the roots (read without validation: a broken
    recipe still owns its ledger entries; its stages are None when its steps cannot be read)."""
    from optcheck.steps.registry import KINDS, ROOT

    from optcheck.recipes.zoo import is_zoo, labels

    names: dict[str, set[str] | None] = {}
    files_of: dict[str, list[Path]] = {}
    for f, name, raw in _recipe_tables(roots, ledger):
        if f not in files_of.setdefault(name, []):
            files_of[name].append(f)
        if is_zoo(raw):  # a zoo recipe's ledger entries are its models' known failures
            names[name] = None if name in names else labels(raw)
            continue
        try:
            stages = {ROOT.stage} | {s.get("name") or KINDS[s["kind"]].stage for s in raw.get("steps", [])}
        except (AttributeError, KeyError, TypeError):
            stages = None
        names[name] = None if stages is None or name in names else stages
    twice = {n: fs for n, fs in files_of.items() if len(fs) > 1}
    if twice:  # the ledger files entries by recipe name: two recipes with one name would share them
        name, files = next(iter(sorted(twice.items())))
        raise pytest.UsageError(
            f"two recipes are named {name!r} ({', '.join(str(f) for f in files)}): the regression ledger "
            f"keeps its entries by recipe name, so they would share them. Give one of them its own "
            f"top-level name = \"...\" (or rename the file), or run with --optcheck-ledger off")
    return names


def recipe_metric_names(roots: list[Path], ledger: Path) -> dict[str, set[str]]:
    """Name -> the team metric names (``[[metrics]] name``) of every recipe file under the roots: the
    fields its ledger entries may hold besides optcheck's."""
    out: dict[str, set[str]] = {}
    for _, name, raw in _recipe_tables(roots, ledger):
        metrics = raw.get("metrics") if isinstance(raw.get("metrics"), list) else []
        out[name] = {m["name"] for m in metrics if isinstance(m, dict) and isinstance(m.get("name"), str)}
    return out


def _recipe_tables(roots: list[Path], ledger: Path):
    """``(resolved path, recipe name, raw TOML)`` of every ``.toml`` under the roots but the ledger; a
    file that does not read or parse yields ``{}`` (its name is its stem)."""
    for root in roots:
        files = [root] if root.is_file() else sorted(root.rglob("*.toml")) if root.is_dir() else []
        for f in files:
            if f.resolve() == ledger.resolve():
                continue
            try:
                raw = tomllib.loads(f.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
                raw = {}
            yield f.resolve(), raw.get("name") if isinstance(raw.get("name"), str) else f.stem, raw


def _is_zoo_file(path: Path) -> bool:
    """A zoo recipe has no metrics to calibrate (its ledger entries are known failures)."""
    from optcheck.recipes.zoo import is_zoo

    try:
        return is_zoo(tomllib.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


def calibrate_session(config: pytest.Config, state, roots: list[Path], count: int) -> None:
    """Run ``calibrate.calibrate_recipes`` over the recipes this session selected, then reload the
    ledger so the checks judge against what was just written."""
    import os

    from optcheck.ledger.calibrate import calibrate_recipes

    if count < 1:
        raise pytest.UsageError(f"--optcheck-calibrate {count}: give the number of runs per recipe (8 or more)")
    if state.ledger is None:
        raise pytest.UsageError("--optcheck-calibrate writes the regression ledger, which is off "
                                "(--optcheck-ledger off): drop one of the two options")
    ledger = state.ledger.path
    paths: list[Path] = []
    for arg in config.args:
        p = Path(arg.split("::")[0])
        p = p if p.is_absolute() else config.invocation_params.dir / p
        files = [p] if p.is_file() else sorted(p.rglob("*.toml")) if p.is_dir() else []
        for f in files:
            f = f.resolve()
            if (f.suffix == ".toml" and f.name != LEDGER_NAME and f != ledger.resolve()
                    and any(f == r or r in f.parents for r in roots) and f not in paths and not _is_zoo_file(f)):
                paths.append(f)
    if not paths:
        raise pytest.UsageError("--optcheck-calibrate: no recipe selected (name recipe files or folders, "
                                "or set optcheck_recipes)")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cache = state.cache.root if state.cache is not None else None
    reporter = config.pluginmanager.get_plugin("terminalreporter")

    def log(message: str) -> None:  # calibration progress is shown even under -q: it takes minutes
        if reporter is not None:
            reporter.write_line(f"[optcheck] {message}")

    calibrate_recipes(paths, count, ledger_path=ledger, device=state.device if state.device != "auto" else "cpu",
                      threads=state.threads or 1, cache_dir=cache, jobs=max(1, cores // (state.threads or 1)),
                      log=log, rootdir=config.rootpath, display=state.relpath,
                      import_paths=tuple(str(p) for p in config.getini("pythonpath")))
    state.ledger = open_ledger(config, roots)
