"""The plugin through pytester: flag on/off, node ids, skip reasons, collection errors, fixtures,
the results table, options, and lazy imports."""

from __future__ import annotations

import pytest

from conftest import tiny_recipe

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True, scope="module")
def heavy_modules_loaded_once():
    """pytester's in-process runs drop modules first imported inside them, and some of modelopt's
    compiled dependencies cannot be loaded twice in one process: import them up front."""
    import sklearn.model_selection  # noqa: F401
    import torchvision.transforms.v2  # noqa: F401

    from optcheck.core.compat import import_modelopt

    import_modelopt()


@pytest.fixture
def project(pytester):
    """A project with one tiny recipe under recipes/."""
    pytester.makeini("[pytest]\noptcheck_ledger = off\nfilterwarnings = ignore::UserWarning\n")
    pytester.mkdir("recipes")
    (pytester.path / "recipes" / "tiny.toml").write_text(tiny_recipe())
    return pytester


def test_without_the_flag_recipe_items_are_skipped_with_the_reason(project):
    result = project.runpytest_inprocess("-rs", "-v")
    result.assert_outcomes(skipped=4)
    result.stdout.fnmatch_lines([
        "recipes/tiny.toml::baseline_accuracy_at_least SKIPPED*",
        "recipes/tiny.toml::flops_below SKIPPED*",
        "recipes/tiny.toml::accuracy_drop_under SKIPPED*",
        "recipes/tiny.toml::restore_roundtrip SKIPPED*",
        "*optcheck recipes run only with --optcheck*",
    ])


def test_with_the_flag_each_budget_is_an_item_and_the_table_is_printed(project):
    result = project.runpytest_inprocess("--optcheck", "-v", "--optcheck-device", "cpu")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines([
        "recipes/tiny.toml::baseline_accuracy_at_least PASSED*",
        "recipes/tiny.toml::flops_below PASSED*",
        "recipes/tiny.toml::accuracy_drop_under PASSED*",
        "recipes/tiny.toml::restore_roundtrip PASSED*",
        "*optcheck results*",
        "optcheck results: tiny (*tiny.toml, seed 0)",
        "stage*test acc*FLOPs*params*checkpoint*time*",
        "baseline*(n=48)*",
        "pruned*", "finetuned*",
        "checks: baseline_accuracy_at_least passed, flops_below passed, accuracy_drop_under passed, "
        "restore_roundtrip passed",
        "baseline_accuracy_at_least: * vs floor 62.50% (auto: halfway from chance 25.00% to 100%*",
        "accuracy_drop_under: drop * pp, 95% CI [[]*] pp (n=48; *); rule point: * -> pass",
    ])
    out = result.stdout.str()
    assert out.count("[optcheck] tiny: building baseline") == 1  # once per session
    assert "[optcheck] baseline: epoch 6/6" in out  # progress on the terminal


def test_stage_budget_tables_are_items_under_the_stage_and_selectable_by_node_id(project):
    budgets = ('flops_below = "70%"\naccuracy_drop_under = 0.25\n'
               "[budgets.pruned]\nrestore_roundtrip = true\naccuracy_drop_under = 0.9\n")
    (project.path / "recipes" / "tiny.toml").write_text(tiny_recipe(budgets=budgets))
    result = project.runpytest_inprocess("--optcheck", "-v")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines([
        "recipes/tiny.toml::baseline_accuracy_at_least PASSED*",
        "recipes/tiny.toml::flops_below PASSED*",
        "recipes/tiny.toml::accuracy_drop_under PASSED*",
        "recipes/tiny.toml::pruned::accuracy_drop_under PASSED*",
        "recipes/tiny.toml::pruned::restore_roundtrip PASSED*",
        "checks: baseline_accuracy_at_least passed, flops_below passed, accuracy_drop_under passed, "
        "pruned::accuracy_drop_under passed, pruned::restore_roundtrip passed",
    ])
    one = project.runpytest_inprocess("--optcheck", "-v", "recipes/tiny.toml::pruned::restore_roundtrip")
    one.assert_outcomes(passed=1)


def test_quiet_hides_progress_but_keeps_the_table(project):
    result = project.runpytest_inprocess("--optcheck", "-q")
    result.assert_outcomes(passed=4)
    out = result.stdout.str()
    assert "[optcheck]" not in out and "optcheck results: tiny" in out


def test_a_broken_budget_fails_with_a_readable_message(project):
    (project.path / "recipes" / "tiny.toml").write_text(
        tiny_recipe(budgets='flops_below = "20%"\naccuracy_drop_under = 0.25\n'))
    result = project.runpytest_inprocess("--optcheck")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*flops_below (tiny.toml)*",
        "optcheck budget 'flops_below' failed",
        "  measured *",
        "  limit * = 20% of reference *",
        "  over by *",
        "  hint *",
        "*checks: baseline_accuracy_at_least passed, flops_below failed, accuracy_drop_under passed",
    ])
    assert "Traceback" not in result.stdout.str() and "def check_budget" not in result.stdout.str()


def test_a_baseline_that_learned_nothing_fails_its_floor_and_the_other_checks_still_run(project):
    (project.path / "recipes" / "tiny.toml").write_text(  # one epoch at a learning rate of 1e-6: untrained
        tiny_recipe(budgets='flops_below = "70%"\nrestore_roundtrip = true\n')
        .replace("epochs = 6\nlr = 0.4", "epochs = 1\nlr = 1e-6"))
    result = project.runpytest_inprocess("--optcheck", "-v")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "recipes/tiny.toml::baseline_accuracy_at_least FAILED*",
        "recipes/tiny.toml::flops_below PASSED*",
        "recipes/tiny.toml::restore_roundtrip PASSED*",
        "*baseline_accuracy_at_least (tiny.toml)*",
        "optcheck budget 'baseline_accuracy_at_least' failed",
        "  accuracy       : *% (n=48, * correct; 95% CI [[]*]%)",
        "  floor          : 62.50% (auto: halfway from chance 25.00% to 100%)",
        "  chance         : 25.00% (always answering the most frequent label)",
        "  why it matters : the baseline learned too little*",
        "  hint           : train the baseline longer*",
        "checks: baseline_accuracy_at_least failed, flops_below passed, restore_roundtrip passed",
    ])


def test_accuracy_rule_assured_under_needs_the_whole_interval_under_the_budget(project, monkeypatch):
    # the tiny recipe measures a drop of 8.33 pp (4 of 48 test images) with a 95% CI reaching about +19 pp:
    # under 12 pp on the point estimate, not on the upper bound
    recipe = project.path / "recipes" / "tiny.toml"
    recipe.write_text(tiny_recipe(budgets='accuracy_drop_under = 0.12\naccuracy_rule = "point"\n'))
    point = project.runpytest_inprocess("--optcheck")
    point.assert_outcomes(passed=2)
    point.stdout.fnmatch_lines(["accuracy_drop_under: drop * pp, 95% CI [[]*] pp (n=48; *); "
                                "rule point: pass when the observed drop <= 12.00 pp -> pass"])
    recipe.write_text(tiny_recipe(budgets='accuracy_drop_under = 0.12\naccuracy_rule = "assured_under"\n'))
    summary = project.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assured = project.runpytest_inprocess("--optcheck")  # the same models, from the cache
    assured.assert_outcomes(passed=1, failed=1)
    assured.stdout.fnmatch_lines([
        "optcheck budget 'accuracy_drop_under' failed",
        "  drop      : * pp, allowed 12.00 pp",
        "  95% CI    : [[]*] pp (paired: * images only the baseline got right, * only the candidate)",
        "  rule      : assured_under: pass only when the upper bound <= 12.00 pp -> fail",
        "checks: baseline_accuracy_at_least passed, accuracy_drop_under failed",
        "accuracy_drop_under: drop * pp, 95% CI [[]*] pp (n=48; *); "
        "rule assured_under: pass only when the upper bound <= 12.00 pp -> fail",
    ])
    assert "building baseline" not in assured.stdout.str()
    md = summary.read_text()
    assert "| accuracy_drop_under | ❌ failed | drop " in md
    assert "rule assured_under: pass only when the upper bound <= 12.00 pp -> fail; " \
           "optcheck budget 'accuracy_drop_under' failed |" in md


def test_seeds_judge_the_accuracy_budget_on_the_mean_drop_over_the_seeds(project):
    import json

    text = tiny_recipe(budgets="accuracy_drop_under = 0.25\n").replace("seed = 0", "seeds = [0, 1]")
    text = text.replace('[[steps]]\nkind = "finetune"\nepochs = 3\nlr_scale = 0.1\n', "")  # fewer builds: faster
    (project.path / "recipes" / "tiny.toml").write_text(text)
    result = project.runpytest_inprocess("--optcheck", "--optcheck-report", "report.json")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "optcheck results: tiny (*, seed 0)",  # the other checks and the table: the first seed
        "accuracy_drop_under: mean drop * pp over 2 seeds, 95% t-interval [[]*] pp (n=48 images per seed; "
        "per-seed drops *, * pp; sd * pp); rule point: pass when the observed drop <= 25.00 pp -> pass",
    ])
    assert result.stdout.str().count("tiny: building baseline") == 2  # one build per seed
    [recipe] = json.loads((project.path / "report.json").read_text())["recipes"]
    details = recipe["verdicts"]["accuracy_drop_under"]["details"]
    assert details["seeds"] == 2 and details["ci_low"] <= details["accuracy_drop"] <= details["ci_high"]


def test_an_unknown_accuracy_rule_is_a_recipe_error(project):
    (project.path / "recipes" / "tiny.toml").write_text(
        tiny_recipe(budgets='accuracy_drop_under = 0.05\naccuracy_rule = "nonsense"\n'))
    result = project.runpytest_inprocess("--optcheck")
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "tiny.toml: invalid optcheck recipe (1 problem)" in out
    assert "field 'budgets.accuracy_rule': Input should be 'point', 'not_significantly_over' or 'assured_under'" in out
    assert "building baseline" not in out


def test_bad_recipe_is_one_collection_error_and_the_others_still_run(project):
    (project.path / "recipes" / "bad.toml").write_text(
        tiny_recipe(budgets="flops_below = '150%'\n").replace("epochs = 6", "epochs = 6\nepoch = 4"))
    result = project.runpytest_inprocess("--optcheck")
    result.assert_outcomes(passed=4, errors=1)
    out = result.stdout.str()
    assert "ERROR collecting recipes/bad.toml" in out
    assert "bad.toml: invalid optcheck recipe (2 problems)" in out
    assert "field 'train.epoch': unknown key" in out and "did you mean 'epochs'?" in out
    assert "field 'budgets.flops_below'" in out and "(0%, 100%]" in out
    assert "Traceback" not in out and "pydantic" not in out


def test_bad_recipe_errors_even_without_the_flag(project):
    (project.path / "recipes" / "bad.toml").write_text("[data]\ndataset = 'mnist'\n[budgets]\naccuracy_drop_under = 0.1\n")
    result = project.runpytest_inprocess()
    result.assert_outcomes(skipped=4, errors=1)
    assert "field 'data.dataset': unknown dataset 'mnist'" in result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_other_collection_errors_still_stop_the_session(project):
    project.makepyfile(test_broken="import does_not_exist\n")
    (project.path / "recipes" / "bad.toml").write_text("[budgets]\naccuracy_drop_under = 2\n")
    result = project.runpytest_inprocess()
    result.assert_outcomes(errors=2)
    assert "Interrupted: 2 errors during collection" in result.stdout.str()


def test_unreachable_flops_target_fails_the_recipe_before_anything_trains(project):
    (project.path / "recipes" / "tiny.toml").write_text(tiny_recipe(flops="1%"))
    collected = project.runpytest_inprocess("--optcheck", "--co", "-q")
    assert collected.ret == 0  # collection validates the schema only: no data, no model, no search
    result = project.runpytest_inprocess("--optcheck")
    result.assert_outcomes(failed=4)  # the first item with the whole error, the others in one line
    out = result.stdout.str()
    # count in the failure reports only: the short summary repeats whole messages when pytest sees $CI
    failures = out.split("short test summary info")[0]
    assert failures.count("failed earlier in this session") == 3
    assert "field 'steps[0].flops': target '1%'" in out and "is unreachable" in out
    assert "smallest subnet of this search space (channel_divisor=4, feature_divisor=4)" in out
    assert "raise steps[0].flops to at least" in out
    assert "building baseline" not in out  # found before any training


def test_missing_cifar10_skips_with_where_it_looked(project, tmp_path):
    (project.path / "recipes" / "cifar.toml").write_text(
        tiny_recipe().replace('dataset = "synthetic"', f'dataset = "cifar10"\nroot = "{tmp_path / "none"}"')
        .replace("options = { samples = 240, classes = 4, image_size = 16 }\n", ""))
    result = project.runpytest_inprocess("--optcheck", "-rs", "recipes/cifar.toml")
    result.assert_outcomes(skipped=4)
    result.stdout.fnmatch_lines([f"*CIFAR-10 not found: looked in {tmp_path / 'none' / 'cifar-10-batches-py'}*"])


def test_fixtures_share_the_stages_with_recipe_items(project):
    project.makepyfile(test_hand="""
        import pytest
        from optcheck import assert_flops_below, assert_restore_roundtrip

        pytestmark = pytest.mark.optcheck_recipe("recipes/tiny.toml")

        def test_stages(optcheck_recipe, optcheck_run, trained_baseline, pruned_subnet, restored_model, finetuned_model,
                        optcheck_artifacts):
            assert optcheck_recipe.name == "tiny"
            assert list(optcheck_artifacts) == ["baseline", "pruned", "finetuned"]
            # the session's stage, not a rebuild: same metrics; but a copy of its model
            assert pruned_subnet.metrics is optcheck_run.artifacts["pruned"].metrics
            assert pruned_subnet.model is not optcheck_run.artifacts["pruned"].model
            assert optcheck_artifacts["finetuned"].metrics is finetuned_model.metrics
            assert trained_baseline.path.exists() and finetuned_model.path.exists()
            assert restored_model.metrics.flops == pruned_subnet.metrics.flops < trained_baseline.metrics.flops
            assert 0 <= finetuned_model.metrics.test_acc <= 1 and finetuned_model.metrics.test_n == 48

        def test_a_test_that_changes_a_fixture_model_changes_no_verdict(finetuned_model):
            import torch
            with torch.no_grad():
                for p in finetuned_model.model.parameters():
                    p.zero_()  # would break accuracy_drop_under and restore_roundtrip if it were the session's

        def test_my_own_budget(trained_baseline, finetuned_model, optcheck_run):
            assert_flops_below(finetuned_model.model, "70%", dummy_input=optcheck_run.ctx.dummy_input(),
                               reference=trained_baseline.model)
    """)
    # the user's tests first: the recipe items judge after a test zeroed its copy of the fine-tuned model
    result = project.runpytest_inprocess("--optcheck", "test_hand.py", "recipes")
    result.assert_outcomes(passed=7)
    assert result.stdout.str().count("tiny: building baseline") == 1


def test_fixtures_skip_without_the_flag_and_need_the_marker(project):
    project.makepyfile(test_hand="""
        import pytest

        @pytest.mark.optcheck_recipe("recipes/tiny.toml")
        def test_marked(trained_baseline):
            pass

        def test_unmarked(optcheck_recipe):
            pass
    """)
    result = project.runpytest_inprocess("-rs", "test_hand.py")
    result.assert_outcomes(skipped=1, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_unmarked*",
                                 "*mark the test with @pytest.mark.optcheck_recipe*",
                                 "*optcheck fixtures run only with --optcheck*"])


def test_optcheck_recipes_option_and_seed(pytester):
    pytester.mkdir("elsewhere")
    (pytester.path / "elsewhere" / "tiny.toml").write_text(tiny_recipe())
    pytester.makepyfile(test_other="def test_ok(): pass")
    result = pytester.runpytest_inprocess("--optcheck", "--optcheck-recipes", "elsewhere", "--optcheck-seed", "7", "--optcheck-ledger", "off",
                                          "-W", "ignore::UserWarning", "test_other.py")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["optcheck results: tiny (*, seed 7)"])


def test_ini_options(pytester):
    pytester.makeini("[pytest]\noptcheck_ledger = off\noptcheck_recipes = cfg\noptcheck_seed = 3\nfilterwarnings = ignore::UserWarning\n")
    pytester.mkdir("cfg")
    (pytester.path / "cfg" / "tiny.toml").write_text(tiny_recipe().replace("seed = 0\n", ""))
    result = pytester.runpytest_inprocess("--optcheck")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["optcheck results: tiny (*, seed 3)"])


def test_bad_device_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\noptcheck_device = tpu\n")
    result = pytester.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*optcheck_device = 'tpu'*use auto, cpu or cuda*"])


def test_cuda_without_a_gpu_is_a_usage_error(project):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = project.runpytest_inprocess("--optcheck", "--optcheck-device", "cuda")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--optcheck-device=cuda, but torch.cuda.is_available() is False*"])


def test_params_constraint_and_budget(project):
    (project.path / "recipes" / "tiny.toml").write_text(
        tiny_recipe(budgets='params_below = "60%"\n').replace('flops = "60%"', 'params = "60%"'))
    result = project.runpytest_inprocess("--optcheck", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*fastnas: searching under params <= 60%*", "recipes/tiny.toml::params_below PASSED*"])


def test_toml_files_outside_the_recipe_folders_are_not_collected(project):
    (project.path / "conf").mkdir()
    (project.path / "conf" / "settings.toml").write_text("[tool]\nx = 1\n")
    result = project.runpytest_inprocess("--optcheck", "--collect-only", "-q", ".")
    assert result.ret == 0, result.stdout.str()  # collected fine: not a failure that hides the check
    out = result.stdout.str()
    assert "recipes/tiny.toml::flops_below" in out and "settings.toml" not in out


def test_a_recipe_named_on_the_command_line_runs_wherever_it_lives(project):
    (project.path / "elsewhere").mkdir()
    (project.path / "elsewhere" / "mine.toml").write_text(tiny_recipe())
    result = project.runpytest_inprocess("--optcheck", "-v", "elsewhere/mine.toml")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["elsewhere/mine.toml::flops_below PASSED*"])
    (project.path / "elsewhere" / "settings.toml").write_text("[tool]\nx = 1\n")
    named = project.runpytest_inprocess("--optcheck", "elsewhere/settings.toml")
    assert named.ret != 0  # asked for by name: judged as a recipe, and this one is not
    named.stdout.fnmatch_lines(["*elsewhere/settings.toml: invalid optcheck recipe*", "*budgets*"])


LAZY_CONFTEST = """
import sys, json
def pytest_sessionfinish(session):
    heavy = sorted(m for m in ("torch", "modelopt", "torchvision", "torchprofile") if m in sys.modules)
    with open("modules.json", "w") as fh:
        json.dump({"heavy": heavy, "plugin": "optcheck.plugin" in sys.modules}, fh)
"""


@pytest.mark.parametrize("with_recipes", [False, True], ids=["plain-project", "recipes-without-flag"])
def test_a_session_that_does_not_use_optcheck_imports_no_torch(pytester, with_recipes):
    import json

    pytester.makeconftest(LAZY_CONFTEST)
    pytester.makepyfile(test_plain="def test_ok():\n    assert 1 + 1 == 2\n")
    if with_recipes:
        pytester.mkdir("recipes")
        (pytester.path / "recipes" / "tiny.toml").write_text(tiny_recipe())
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, skipped=4 if with_recipes else 0)
    seen = json.loads((pytester.path / "modules.json").read_text())
    assert seen == {"heavy": [], "plugin": True}


def test_two_recipes_with_one_name_would_share_ledger_entries_and_are_refused(project):
    (project.path / "recipes" / "more").mkdir()
    (project.path / "recipes" / "more" / "tiny.toml").write_text(tiny_recipe())
    result = project.runpytest_inprocess("--optcheck", "--optcheck-ledger", "recipes/optcheck-ledger.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*two recipes are named 'tiny'*own top-level name*"])
    off = project.runpytest_inprocess("--optcheck", "--optcheck-ledger", "off", "--co", "-q")
    assert off.ret == 0  # without the ledger, names need not be unique
