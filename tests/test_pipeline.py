"""RecipeRun: stage order, one build per stage, failures remembered rather than retried."""

from __future__ import annotations

import pytest

from conftest import tiny_recipe
from optcheck.core.errors import RecipeError, StepError
from optcheck.pipeline.run import RecipeRun, StageFailed
from optcheck.recipes.loader import load_recipe


@pytest.fixture
def run(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_recipe())
    return RecipeRun(load_recipe(path), device="cpu", seed=0, workdir=lambda: tmp_path / "work")


def test_stages_and_final_stage(run):
    assert run.available_stages() == ["baseline", "pruned", "finetuned"]
    assert run.final_stage() == "finetuned"


def test_a_failed_stage_is_not_retried(run, monkeypatch):
    (run._workdir()).mkdir()
    calls = []

    def broken(run, parent):
        calls.append(1)
        raise RuntimeError("out of memory")

    import dataclasses

    root = run.stages["baseline"]
    monkeypatch.setitem(run.stages, "baseline", dataclasses.replace(root, kind=dataclasses.replace(root.kind, build=broken)))
    with pytest.raises(StepError, match="(?s)stage 'baseline'.*cause: RuntimeError: out of memory") as info:
        run.artifact("pruned")
    # one short message that names where the user's code raised, the original exception chained
    assert "test_pipeline.py:" in str(info.value) and "in broken" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError) and len(str(info.value).splitlines()) < 10
    with pytest.raises(StageFailed, match="stage 'baseline' of .*tiny.toml failed earlier in this session"):
        run.artifact("finetuned")
    assert calls == [1]


def test_asking_for_a_stage_the_recipe_lacks(tmp_path):
    path = tmp_path / "q.toml"
    path.write_text('[data]\ndataset = "synthetic"\n[model]\nname = "small_cnn"\n[[steps]]\nkind = "quantize"\n'
                    "[budgets]\naccuracy_drop_under = 0.5\n")
    run = RecipeRun(load_recipe(path), device="cpu")
    assert run.available_stages() == ["baseline", "quantized"]
    with pytest.raises(RecipeError, match="no stage 'pruned'; its stages are baseline, quantized") as info:
        run.artifact("pruned")
    assert "add a [[steps]] table with kind = 'fastnas' or 'torch_pruning'" in str(info.value)


def test_a_stage_built_after_cached_ones_equals_one_built_in_sequence(tiny_run, tmp_path):
    """Stages must not depend on what ran before them in the process (RNG state, loader order):
    otherwise a cache hit upstream would change the model downstream."""
    from optcheck.pipeline.cache import ArtifactCache
    from optcheck.pipeline.run import RecipeRun

    cache = ArtifactCache(tmp_path / "cache")
    first = RecipeRun(tiny_run.recipe, device="cpu", seed=0, cache=cache, workdir=lambda: tmp_path / "a")
    (tmp_path / "a").mkdir()
    for stage in first.available_stages():
        first.artifact(stage)
    for entry in (tmp_path / "cache" / "entries" / "finetuned").iterdir():
        entry.rename(tmp_path / "removed")
    (tmp_path / "b").mkdir()
    second = RecipeRun(tiny_run.recipe, device="cpu", seed=0, cache=cache, workdir=lambda: tmp_path / "b")
    rebuilt = second.artifact("finetuned")
    assert [second.events[s]["cache"] for s in ("pruned", "finetuned")] == ["hit", "built"]
    assert "baseline" not in second.events  # a cache hit needs no parent: the baseline was not even loaded
    for run in (first, tiny_run):  # with and without a cache, in one sequence
        assert rebuilt.metrics.test_acc == run.artifacts["finetuned"].metrics.test_acc
        assert rebuilt.metrics.val_acc == run.artifacts["finetuned"].metrics.val_acc
    a = first.artifacts["finetuned"].model.state_dict()
    b = rebuilt.model.state_dict()
    assert all((a[k] == b[k]).all() for k in a)


def test_an_entry_that_verifies_but_does_not_load_is_quarantined_and_rebuilt(tiny_run, tmp_path):
    import shutil

    from optcheck.pipeline.cache import ArtifactCache, CacheWarning
    from optcheck.pipeline.run import RecipeRun

    cache = ArtifactCache(tmp_path / "cache")
    (tmp_path / "a").mkdir()
    first = RecipeRun(tiny_run.recipe, device="cpu", seed=0, cache=cache, workdir=lambda: tmp_path / "a")
    good = first.artifact("finetuned")
    key = first.keys["finetuned"]["key"]
    entry = cache.load("finetuned", key)
    shutil.rmtree(entry.path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    cache.store("finetuned", key, {"modelopt": garbage}, {k: v for k, v in entry.meta.items()
                                                          if k in ("metrics", "info", "recipe", "key_material")})
    (tmp_path / "b").mkdir()
    second = RecipeRun(tiny_run.recipe, device="cpu", seed=0, cache=cache, workdir=lambda: tmp_path / "b")
    rebuilt = second.artifact("finetuned")
    assert not rebuilt.loaded  # from the cache, the model is loaded when first needed
    with pytest.warns(CacheWarning, match=r"finetuned.*could not be loaded"):
        model = rebuilt.model
    assert second.events["finetuned"]["cache"] == "rebuilt (entry did not load)"
    assert rebuilt.metrics.test_acc == good.metrics.test_acc
    assert model is second.artifact("finetuned").model
    assert cache.load("finetuned", key) is not None  # stored again
    assert len(list((tmp_path / "cache" / "quarantine").iterdir())) == 1
