"""The one place optcheck reads other packages' private names, each behind a function.

pytest-benchmark has no public way to time through its fixture from a hook, nor to add a series to its
session; pytest has none to reach the session's ``tmp_path_factory`` outside a fixture. Everything
optcheck needs of that kind is here, so an upgrade that renames one breaks one function, and
``tests/test_private_api.py`` fails loudly, naming it, before anything else does.
"""

from __future__ import annotations

from typing import Any

# what this module reads, by package: tests/test_private_api.py checks every one of them exists
PYTEST_BENCHMARK_FIXTURE = ("_timer", "_disable_gc", "_min_rounds", "_add_stats")
PYTEST_CONFIG = ("_tmp_path_factory",)


def benchmark_session(config) -> Any | None:
    """pytest-benchmark's ``BenchmarkSession`` (it registers itself as plugin ``pytest-benchmark``), or
    None when pytest-benchmark is not loaded (``-p no:benchmark``)."""
    return config.pluginmanager.get_plugin("pytest-benchmark")


def benchmark_fixture(item, session) -> Any:
    """A ``BenchmarkFixture`` for ``item``, built as pytest-benchmark's own ``benchmark`` fixture builds
    it (its session's options, timer and table)."""
    from pytest_benchmark.fixture import BenchmarkFixture

    return BenchmarkFixture(item, add_stats=session.benchmarks.append, logger=session.logger, warner=item.warn,
                            disabled=session.disabled, **session.options)


def fixture_timer(benchmark) -> tuple[Any, bool]:
    """``(timer, disable_gc)`` of a pytest-benchmark fixture: ``--benchmark-timer`` and ``--benchmark-disable-gc``."""
    return benchmark._timer, benchmark._disable_gc


def fixture_min_rounds(benchmark) -> int:
    """``--benchmark-min-rounds`` as the fixture holds it."""
    return int(getattr(benchmark, "_min_rounds", 0) or 0)


def add_stats(benchmark, metadata) -> None:
    """Hand one timed series (a ``pytest_benchmark.stats.Metadata``) to the fixture's session."""
    benchmark._add_stats(metadata)


def tmp_path_factory(config) -> Any | None:
    """pytest's ``TempPathFactory`` for this session (set by the tmp_path plugin in its configure
    hook), or None under ``-p no:tmpdir``."""
    return getattr(config, "_tmp_path_factory", None)
