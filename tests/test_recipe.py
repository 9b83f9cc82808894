"""Recipe schema: the shipped recipes validate; every kind of bad input gets one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from optcheck.core.errors import RecipeError
from optcheck.core.limits import check_limit, parse_percent, resolve_limit
from optcheck.recipes.loader import load_recipe

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
    from optcheck.ledger.entries import load_ledger

    from optcheck.pipeline.run import stages_of
    from optcheck.plugin.settings import known_recipe_names

    ledger = load_ledger(ROOT / "recipes" / "optcheck-ledger.toml",
                         known_recipe_names([ROOT / "recipes"], ROOT / "recipes" / "optcheck-ledger.toml"))
    runnable = [load_recipe(p) for p in SHIPPED if load_recipe(p).data.dataset == "digits"]
    assert len(runnable) == 6
    assert {(r, s) for r, _, s in ledger.entries} == {(r.name, s) for r in runnable for s in stages_of(r)}


def test_defaults_and_budget_order(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE))
    assert recipe.train.momentum == 0.9 and recipe.train.weight_decay == 1e-4
    assert recipe.step("finetune").lr_scale == 0.5
    assert recipe.budgets.active() == ["baseline_accuracy_at_least", "flops_below", "accuracy_drop_under"]


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
    msg = error_for(tmp_path, BASE.replace('kind = "finetune"', 'kind = "prune"'))
    assert "field 'steps[1]'" in msg and "'prune'" in msg
    assert "'fastnas' | 'torch_pruning' | 'finetune' | 'quantize' | 'sparsify'" in msg  # every registered kind, listed


def test_a_near_miss_kind_gets_a_suggestion(tmp_path):
    assert "did you mean 'quantize'?" in error_for(tmp_path, BASE.replace('kind = "finetune"', 'kind = "quantise"'))


@pytest.mark.parametrize("kind, needle", [("gradnas", "removed from Model Optimizer in 0.45"),
                                          ("minitron", "needs megatron-core and a CUDA GPU")])
def test_kinds_this_install_cannot_run_say_what_is_missing(tmp_path, kind, needle):
    msg = error_for(tmp_path, BASE.replace('kind = "fastnas"\nflops = "50%"', f'kind = "{kind}"'))
    assert "field 'steps[0].kind'" in msg and needle in msg and "use kind = 'fastnas'" in msg
    assert "Traceback" not in msg


def test_steps_of_any_kind_in_any_order_with_their_own_stage_names(tmp_path):
    from optcheck.pipeline.run import stages_of

    text = BASE.replace('[[steps]]\nkind = "finetune"\n', '[[steps]]\nkind = "finetune"\n[[steps]]\n'
                        'kind = "quantize"\n[[steps]]\nkind = "finetune"\nname = "qat"\n[[steps]]\nkind = "sparsify"\n')
    recipe = load_recipe(write(tmp_path, text))
    assert stages_of(recipe) == ["baseline", "pruned", "finetuned", "quantized", "qat", "sparsified"]
    before = BASE.replace('kind = "fastnas"\nflops = "50%"', 'kind = "finetune"').replace(
        '[[steps]]\nkind = "finetune"\n[budgets]', '[[steps]]\nkind = "fastnas"\nflops = "50%"\n[budgets]')
    assert stages_of(load_recipe(write(tmp_path, before))) == ["baseline", "finetuned", "pruned"]


def test_two_stages_with_one_name_are_refused_with_the_fix(tmp_path):
    twice = BASE.replace('[[steps]]\nkind = "finetune"\n', '[[steps]]\nkind = "finetune"\n[[steps]]\nkind = "finetune"\n')
    msg = error_for(tmp_path, twice)
    assert "two stages are named 'finetuned' (steps[1] and steps[2])" in msg and "name = 'finetuned2'" in msg
    assert "not file-safe" in error_for(tmp_path, BASE.replace('kind = "finetune"', 'kind = "finetune"\nname = "a b"'))


def test_stage_budget_tables(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE + "[budgets.pruned]\naccuracy_drop_under = 0.2\nrestore_roundtrip = true\n"))
    assert recipe.budgets.refs()[-2:] == [("pruned", "accuracy_drop_under"), ("pruned", "restore_roundtrip")]
    assert recipe.budgets.table("pruned").accuracy_drop_under == 0.2
    msg = error_for(tmp_path, BASE + "[budgets.prunned]\naccuracy_drop_under = 0.2\n")
    assert "field 'budgets.prunned'" in msg and "no stage 'prunned'" in msg and "did you mean 'pruned'?" in msg
    msg = error_for(tmp_path, BASE + "[budgets.finetuned]\naccuracy_drop_under = 0.2\n")
    assert "is the final stage, which [budgets] judges" in msg
    msg = error_for(tmp_path, BASE + "[budgets.baseline]\naccuracy_drop_under = 0.2\n")
    assert "compare it with itself" in msg
    msg = error_for(tmp_path, BASE + "[budgets.pruned]\nacuracy_drop_under = 0.2\n")
    assert "field 'budgets.pruned.acuracy_drop_under'" in msg and "did you mean 'accuracy_drop_under'?" in msg
    msg = error_for(tmp_path, BASE + "[budgets.pruned]\nsize_below = \"100%\"\n")
    assert "field 'budgets.pruned.size_below'" in msg and "can never fail" in msg


def test_pre_finetune_drop_under_says_how_to_write_it_now(tmp_path):
    msg = error_for(tmp_path, BASE + "pre_finetune_drop_under = 0.1\n")
    assert "field 'budgets.pre_finetune_drop_under'" in msg and "replaced by per-stage budgets" in msg
    assert "[budgets.pruned] then accuracy_drop_under = 0.1" in msg


def test_budgets_without_a_step_could_never_fail_and_are_refused(tmp_path):
    text = '[data]\ndataset = "digits"\n[budgets]\naccuracy_drop_under = 0.5\n'
    msg = error_for(tmp_path, text)
    assert "field 'steps'" in msg and "compare the baseline with itself" in msg and "add a [[steps]] table" in msg


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


# -- the baseline floor, accuracy rules and seeds ---------------------------------------------------

def test_a_zero_budget_is_the_strictest_budget_not_a_missing_one(tmp_path):
    only_zero = BASE.replace('flops_below = "50%"\n', "").replace("accuracy_drop_under = 0.01", "accuracy_drop_under = 0.0")
    recipe = load_recipe(write(tmp_path, only_zero))  # before: 0.0 == False, dropped, "needs a budget"
    assert recipe.budgets.accuracy_drop_under == 0.0
    assert recipe.budgets.active() == ["baseline_accuracy_at_least", "accuracy_drop_under"]
    both = load_recipe(write(tmp_path, BASE.replace("accuracy_drop_under = 0.01", "accuracy_drop_under = 0\n")
                             + "[budgets.pruned]\naccuracy_drop_under = 0.0\n"))
    assert both.budgets.refs() == [(None, "baseline_accuracy_at_least"), (None, "flops_below"),
                                   (None, "accuracy_drop_under"), ("pruned", "accuracy_drop_under")]
    off = load_recipe(write(tmp_path, BASE + "restore_roundtrip = false\n"))
    assert "restore_roundtrip" not in off.budgets.active()  # false still switches the round trip off


def test_baseline_floor_and_accuracy_rule_defaults(tmp_path):
    budgets = load_recipe(write(tmp_path, BASE)).budgets
    assert budgets.baseline_accuracy_at_least == "auto"
    assert budgets.accuracy_rule == "point" and budgets.confidence == 0.95
    set_ = load_recipe(write(tmp_path, BASE + 'baseline_accuracy_at_least = 0.9\naccuracy_rule = "assured_under"\n'
                                              "confidence = 0.9\n")).budgets
    assert set_.baseline_accuracy_at_least == 0.9 and set_.accuracy_rule == "assured_under"


def test_a_recipe_with_only_the_baseline_floor_has_no_budget(tmp_path):
    text = BASE.replace('flops_below = "50%"\naccuracy_drop_under = 0.01\n', "baseline_accuracy_at_least = 0.9\n")
    assert "at least one budget under [budgets] that judges the compressed model" in error_for(tmp_path, text)


@pytest.mark.parametrize("line, field, needle", [
    ('accuracy_rule = "nonsense"', "budgets.accuracy_rule", "'point', 'not_significantly_over' or 'assured_under'"),
    ("baseline_accuracy_at_least = 1.5", "budgets.baseline_accuracy_at_least", "a fraction in (0, 1], or 'auto'"),
    ('baseline_accuracy_at_least = "high"', "budgets.baseline_accuracy_at_least", "'high' is neither 'auto' nor"),
    ("baseline_accuracy_at_least = true", "budgets.baseline_accuracy_at_least", "True is neither 'auto' nor"),
    ("confidence = 1.0", "budgets.confidence", "less than 1"),
])
def test_bad_floor_rule_or_confidence(tmp_path, line, field, needle):
    msg = error_for(tmp_path, BASE + line + "\n")
    assert "(1 problem)" in msg and f"field '{field}'" in msg and needle in msg


def test_seeds(tmp_path):
    recipe = load_recipe(write(tmp_path, "seeds = [3, 4, 5]\n" + BASE))
    assert recipe.seeds == [3, 4, 5] and recipe.seed is None
    assert load_recipe(write(tmp_path, "seed = 3\nseeds = [3, 4]\n" + BASE)).seeds == [3, 4]  # the same first seed


@pytest.mark.parametrize("lines, field, needle", [
    ("seeds = [0, 0]", "seeds", "seeds [0, 0] repeat a seed"),
    ("seed = 1\nseeds = [0, 1]", "seeds", "seed = 1 and seeds = [0, 1]: give one of them"),
    ("seeds = [0]", "seeds", "at least 2 items"),
])
def test_bad_seeds(tmp_path, lines, field, needle):
    msg = error_for(tmp_path, lines + "\n" + BASE)
    assert f"field '{field}'" in msg and needle in msg


@pytest.mark.parametrize("old, new, field", [
    ("[data]\n", '[data]\nbatch_size = "32"\n', "data.batch_size"),
    ("accuracy_drop_under = 0.01", 'accuracy_drop_under = "0.2"', "budgets.accuracy_drop_under"),
    ("accuracy_drop_under = 0.01", 'accuracy_drop_under = 0.01\nrestore_roundtrip = "off"', "budgets.restore_roundtrip"),
    ("[data]\n", "[data]\nbatch_size = true\n", "data.batch_size"),
    ("[data]\n", "seed = 1.0\n[data]\n", "seed"),
])
def test_no_coercion_between_strings_numbers_and_booleans(tmp_path, old, new, field):
    """TOML has real types: a quoted number or a word for a boolean is a mistake to report, never a
    value to convert (`restore_roundtrip = "off"` used to switch the budget off)."""
    msg = error_for(tmp_path, BASE.replace(old, new))
    assert f"field '{field}" in msg


def test_integers_are_still_fine_where_a_number_is_expected(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE.replace("[data]\n", "[train]\nlr = 1\nwarmup_epochs = 0\n[data]\n")))
    assert recipe.train.lr == 1.0 and isinstance(recipe.train.lr, float)


@pytest.mark.parametrize("step, field, words", [
    ('kind = "quantize"\nformat = "int3"', "steps[0].format", "'int8'"),
    ('kind = "quantize"\ncalib_batches = 0', "steps[0].calib_batches", "greater than or equal to 1"),
    ('kind = "quantize"\nbits = 8', "steps[0].bits", "unknown key"),
    ('kind = "sparsify"\nmethod = "magnitude"', "steps[0].method", "'sparse_magnitude' or 'sparsegpt'"),
    ('kind = "finetune"\ndistill = { temperature = 0 }', "steps[0].distill.temperature", "greater than 0"),
    ('kind = "finetune"\ndistill = { kd_loss_weight = 1.5 }', "steps[0].distill.kd_loss_weight", "less than or equal to 1"),
    ('kind = "finetune"\ndistill = { teacher = "pruned" }', "steps[0].distill.teacher", "unknown key"),
    ('kind = "fastnas"\nflops = "50%"\nchannel_divisor = 0', "steps[0].channel_divisor", "greater than or equal to 1"),
])
def test_each_step_kind_names_its_bad_field(tmp_path, step, field, words):
    text = f'[data]\ndataset = "digits"\n[[steps]]\n{step}\n[budgets]\naccuracy_drop_under = 0.01\n'
    msg = error_for(tmp_path, text)
    assert f"field '{field}'" in msg and words in msg, msg


@pytest.mark.parametrize("edit, needle", [
    ('options = { channels = 2 }', "field 'data.options.channels'"),
    ('crop_padding = 0', "field 'data.crop_padding'"),
])
def test_digits_channels_and_crop_padding_are_checked(tmp_path, edit, needle):
    msg = error_for(tmp_path, BASE.replace('dataset = "digits"', f'dataset = "digits"\n{edit}'))
    assert needle in msg, msg
