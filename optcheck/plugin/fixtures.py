"""Fixtures for a user's own tests: the artifacts of the recipe named by ``@pytest.mark.optcheck_recipe``.

Every artifact fixture hands out a copy: ``mtq.quantize``, ``mts.sparsify`` and friends change a model
in place, and a test that did so to the session's own model would change what later budget items judge.
``optcheck_run`` is the exception: it is the session's own ``RecipeRun`` (data loaders, ``make_model``),
so a model taken from ``optcheck_run.artifact(...)`` is the one the budget items judge.

    optcheck_artifacts["quantized"]   any stage, by name (the recipe's plan: the baseline, then one
                                      stage per step)
    trained_baseline, pruned_subnet, finetuned_model
                                      the stages named baseline, pruned, finetuned (the FastNAS recipe)
    restored_model                    the pruned subnet's checkpoint, mto.restore-d into a fresh model
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from optcheck.plugin.session import get_state


def _marked_recipe(request: pytest.FixtureRequest):
    from optcheck.core.errors import RecipeError
    from optcheck.recipes.loader import load_recipe

    marker = request.node.get_closest_marker("optcheck_recipe")
    if marker is None or not marker.args:
        pytest.fail("optcheck fixtures need a recipe: mark the test with "
                    "@pytest.mark.optcheck_recipe('recipes/<name>.toml')", pytrace=False)
    path = Path(marker.args[0])
    if not path.is_absolute():
        candidates = [request.config.rootpath / path, request.path.parent / path]
        path = next((c for c in candidates if c.exists()), candidates[0])
    try:
        return load_recipe(path)
    except RecipeError as exc:
        pytest.fail(str(exc), pytrace=False)


def _run(request: pytest.FixtureRequest):
    state = get_state(request.config)
    if not state.enabled:
        pytest.skip("optcheck fixtures run only with --optcheck")
    return state.run_for(_marked_recipe(request))


def _copy(artifact, model=None):
    """The artifact with its own copy of the model (metrics and files are plain data)."""
    from optcheck.build.artifacts import Artifact

    return Artifact(artifact.stage, copy.deepcopy(model if model is not None else artifact.model),
                    artifact.metrics, artifact.path, artifact.files, copy.deepcopy(artifact.info))


def _obtain(run, get):
    from optcheck.core.errors import DatasetMissing, RecipeError

    try:
        return get()
    except DatasetMissing as exc:
        pytest.skip(str(exc))
    except RecipeError as exc:
        pytest.fail(str(exc), pytrace=False)


class Artifacts:
    """``optcheck_artifacts[stage]``: a copy of that stage's artifact (built or taken from the cache
    on first use); ``list(optcheck_artifacts)`` gives the stage names in order."""

    def __init__(self, run):
        self.run = run

    def __getitem__(self, stage: str):
        return _obtain(self.run, lambda: _copy(self.run.artifact(stage)))

    def __iter__(self):
        return iter(self.run.available_stages())

    def __len__(self) -> int:
        return len(self.run.available_stages())

    def __contains__(self, stage: object) -> bool:
        return stage in self.run.available_stages()

    def restored(self, stage: str):
        """A copy of the stage's checkpoint restored into a freshly built model."""
        return _obtain(self.run, lambda: _copy(self.run.artifact(stage), self.run.roundtrip(stage)))


@pytest.fixture
def optcheck_recipe(request: pytest.FixtureRequest):
    """The validated recipe named by the test's ``optcheck_recipe`` marker."""
    return _marked_recipe(request)


@pytest.fixture
def optcheck_run(request: pytest.FixtureRequest):
    """The session's ``RecipeRun`` for the marked recipe (its ``ctx`` has the data loaders). Its
    artifacts are the session's own: use ``optcheck_artifacts`` for copies you may change."""
    return _run(request)


@pytest.fixture
def optcheck_artifacts(request: pytest.FixtureRequest) -> Artifacts:
    """Every stage of the marked recipe by name, each a copy: ``optcheck_artifacts["quantized"]``."""
    return Artifacts(_run(request))


@pytest.fixture
def trained_baseline(request: pytest.FixtureRequest):
    """The recipe's trained baseline (``.model``, ``.metrics``, ``.path``), a copy."""
    return Artifacts(_run(request))["baseline"]


@pytest.fixture
def pruned_subnet(request: pytest.FixtureRequest):
    """The FastNAS subnet (the stage named ``pruned``), before fine-tuning, saved with ``mto.save``."""
    return Artifacts(_run(request))["pruned"]


@pytest.fixture
def restored_model(request: pytest.FixtureRequest):
    """The pruned subnet rebuilt with ``mto.restore`` from its checkpoint into a freshly built model."""
    return Artifacts(_run(request)).restored("pruned")


@pytest.fixture
def finetuned_model(request: pytest.FixtureRequest):
    """The stage named ``finetuned``: the pruned subnet after the recipe's fine-tune step."""
    return Artifacts(_run(request))["finetuned"]
