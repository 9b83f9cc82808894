"""RecipeRun: stage order, one build per stage, failures remembered rather than retried."""

from __future__ import annotations

import pytest

from conftest import tiny_recipe
from optcheck import stages
from optcheck.errors import RecipeError
from optcheck.pipeline import RecipeRun, StageFailed
from optcheck.recipe import load_recipe


@pytest.fixture
def run(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_recipe())
    return RecipeRun(load_recipe(path), device="cpu", seed=0, workdir=lambda: tmp_path / "work")


def test_stages_and_final_stage(run):
    assert run.available_stages() == ["baseline", "pruned", "restored", "finetuned"]
    assert run.final_stage() == "finetuned"


def test_a_failed_stage_is_not_retried(run, monkeypatch):
    (run._workdir()).mkdir()
    calls = []

    def broken(ctx):
        calls.append(1)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(stages, "train_baseline", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        run.artifact("pruned")
    with pytest.raises(StageFailed, match="stage 'baseline' of .*tiny.toml failed earlier in this session"):
        run.artifact("finetuned")
    assert calls == [1]


def test_asking_for_a_stage_the_recipe_lacks(tmp_path):
    path = tmp_path / "base.toml"
    path.write_text('[data]\ndataset = "synthetic"\n[model]\nname = "small_cnn"\n'
                    "[budgets]\naccuracy_drop_under = 0.5\n")
    run = RecipeRun(load_recipe(path), device="cpu")
    assert run.available_stages() == ["baseline"]
    with pytest.raises(RecipeError, match="no 'fastnas' step, so there is no pruned model"):
        run.artifact("pruned")
