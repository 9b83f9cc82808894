"""Recipe schema: the shipped recipes validate; every kind of bad input gets one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from optcheck.errors import RecipeError
from optcheck.limits import check_limit, parse_percent, resolve_limit
from optcheck.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
BASE = """
[data]
dataset = "digits"
[[steps]]
kind = "fastnas"
flops = "50%"
[[steps]]
kind = "finetune"
[budgets]
flops_below = "50%"
accuracy_drop_under = 0.01
"""


def write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


SHIPPED = sorted(p for p in (ROOT / "recipes").glob("*.toml") if p.name != "optcheck-ledger.toml")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    assert recipe.budgets.active()


def test_the_shipped_ledger_validates_and_covers_every_runnable_recipe():
    from optcheck.ledger import load_ledger

    ledger = load_ledger(ROOT / "recipes" / "optcheck-ledger.toml", {p.stem for p in SHIPPED})
    assert {(r, s) for r, _, s in ledger.entries} == {
        ("digits_resnet20_fastnas", s) for s in ("baseline", "pruned", "finetuned")}


def test_defaults_and_budget_order(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE))
    assert recipe.train.momentum == 0.9 and recipe.train.weight_decay == 1e-4
    assert recipe.step("finetune").lr_scale == 0.5
    assert recipe.budgets.active() == ["flops_below", "accuracy_drop_under"]


def error_for(tmp_path, text) -> str:
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message  # every error names the file
    return message


def test_unknown_key_names_field_allowed_keys_and_suggestion(tmp_path):
    msg = error_for(tmp_path, BASE.replace('dataset = "digits"', 'dataset = "digits"\nbatchsize = 64'))
    assert "field 'data.batchsize': unknown key" in msg
    assert "batch_size" in msg and "did you mean 'batch_size'?" in msg


def test_wrong_type(tmp_path):
    msg = error_for(tmp_path, BASE.replace("[budgets]", "[train]\nepochs = 'ten'\n[budgets]"))
    assert "field 'train.epochs'" in msg and "'ten'" in msg


def test_missing_budgets(tmp_path):
    msg = error_for(tmp_path, BASE.split("[budgets]")[0])
    assert "field 'budgets': missing required field" in msg


@pytest.mark.parametrize("value, needle", [
    ("-5", "must be a positive number"),
    ("'150%'", "must be a percentage in (0%, 100%]"),
    ("'0%'", "must be a percentage in (0%, 100%]"),
    ("'half'", "neither a number nor a percentage"),
])
def test_bad_flops_budget(tmp_path, value, needle):
    msg = error_for(tmp_path, BASE.replace('flops_below = "50%"', f"flops_below = {value}"))
    assert "field 'budgets.flops_below'" in msg and needle in msg
    assert "allowed: a positive number, or 'N%'" in msg


def test_accuracy_budget_is_a_fraction(tmp_path):
    msg = error_for(tmp_path, BASE.replace("accuracy_drop_under = 0.01", "accuracy_drop_under = 2"))
    assert "field 'budgets.accuracy_drop_under'" in msg and "0.02 means 2 percentage points" in msg


@pytest.mark.parametrize("old, new, field", [
    ('dataset = "digits"', 'dataset = "mnist"', "data.dataset"),
    ("[[steps]]\nkind = \"fastnas\"", "[model]\nname = \"resnet21\"\n[[steps]]\nkind = \"fastnas\"", "model.name"),
])
def test_unknown_dataset_or_model(tmp_path, old, new, field):
    msg = error_for(tmp_path, BASE.replace(old, new, 1))
    assert f"field '{field}'" in msg and "allowed:" in msg and "package.module:function" in msg


def test_unknown_step_kind(tmp_path):
    msg = error_for(tmp_path, BASE.replace('kind = "finetune"', 'kind = "quantize"'))
    assert "field 'steps[1]'" in msg and "'quantize'" in msg and "fastnas' | 'finetune'" in msg


def test_finetune_needs_fastnas_before_it(tmp_path):
    text = BASE.replace('kind = "fastnas"\nflops = "50%"', 'kind = "finetune"').replace(
        '[[steps]]\nkind = "finetune"\n[budgets]', '[[steps]]\nkind = "fastnas"\nflops = "50%"\n[budgets]')
    assert "put a 'fastnas' step before it" in error_for(tmp_path, text)


def test_fastnas_needs_exactly_one_constraint(tmp_path):
    msg = error_for(tmp_path, BASE.replace('flops = "50%"', 'flops = "50%"\nparams = "50%"'))
    assert "exactly one of 'flops' or 'params'" in msg


def test_toml_syntax_error(tmp_path):
    msg = error_for(tmp_path, "[data\n")
    assert "not valid TOML" in msg and "line 1" in msg


def test_every_problem_is_listed_at_once(tmp_path):
    msg = error_for(tmp_path, BASE.replace('dataset = "digits"', 'dataset = "mnist"\nbatchsize = 1')
                    .replace("accuracy_drop_under = 0.01", "accuracy_drop_under = -1"))
    assert "(3 problems)" in msg


@given(st.floats(min_value=1e-3, max_value=100, allow_nan=False))
def test_percent_limits_resolve_against_reference(pct):
    text = f"{pct}%"
    assert parse_percent(text) == pytest.approx(pct / 100)
    assert resolve_limit(text, 2_000.0, "flops") == pytest.approx(20 * pct)


@given(st.one_of(st.floats(max_value=0), st.integers(max_value=0), st.booleans(), st.none()))
def test_non_positive_limits_are_rejected(value):
    with pytest.raises(ValueError):
        check_limit(value)


def test_relative_limit_needs_reference():
    with pytest.raises(ValueError, match="relative: pass reference"):
        resolve_limit("50%", None, "flops_below")
