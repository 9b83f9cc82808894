"""Every private name optcheck reads from another package (``optcheck.core.private_api``) still exists
in the installed versions. When an upgrade renames one, this fails first, naming it."""

from __future__ import annotations


from optcheck.core import private_api



def test_pytest_benchmark_fixture_attributes(pytester):
    pytester.makepyfile(test_probe='''
from optcheck.core import private_api

def test_probe(benchmark, request):
    missing = [a for a in private_api.PYTEST_BENCHMARK_FIXTURE if not hasattr(benchmark, a)]
    assert not missing, f"pytest-benchmark's fixture lost {missing}: update optcheck/core/private_api.py"
    session = private_api.benchmark_session(request.config)
    assert session is not None and hasattr(session, "benchmarks") and hasattr(session, "options")
    timer, disable_gc = private_api.fixture_timer(benchmark)
    assert callable(timer) and isinstance(disable_gc, bool)
    assert private_api.fixture_min_rounds(benchmark) >= 1
    made = private_api.benchmark_fixture(request.node, session)
    assert type(made) is type(benchmark)
''')
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_pytests_tmp_path_factory(pytester):
    pytester.makeconftest('''
from optcheck.core import private_api

def pytest_configure(config):
    config._probe = private_api.tmp_path_factory

def pytest_sessionstart(session):
    factory = session.config._probe(session.config)
    assert factory is not None, "pytest no longer sets config._tmp_path_factory: update optcheck/core/private_api.py"
    assert factory.mktemp("probe").is_dir()
''')
    pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert private_api.PYTEST_CONFIG == ("_tmp_path_factory",)
