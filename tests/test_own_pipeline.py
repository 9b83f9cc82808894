"""A team's own pipeline (issue 22): its trained checkpoint, its metrics, its training loop and its
compression code, each named in a recipe as ``package.module:function`` (``tests/team/team_code.py``).
Every hook is shown working, and every planted regression fails the right check with numbers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from optcheck.budgets.judges import check_budget
from optcheck.core.errors import RecipeError, StepError
from optcheck.pipeline.cache import ArtifactCache
from optcheck.pipeline.run import RecipeRun
from optcheck.recipes.loader import load_recipe

TEAM = Path(__file__).resolve().parent / "team"

HEAD = """
seed = 0
[data]
dataset = "team_code:data"
split_seed = 0
batch_size = 32
augment = []
[model]
name = "team_code:{model}"
{weights}
[train]
epochs = 3
lr = 0.2
warmup_epochs = 0.5
"""


@pytest.fixture(scope="session", autouse=True)
def team_code_importable():
    sys.path.insert(0, str(TEAM))
    yield
    sys.path.remove(str(TEAM))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """The team's trained model (its own loop, elsewhere), as a .safetensors state dict."""
    from safetensors.torch import save_file
    from torch.utils.data import DataLoader

    import team_code

    torch.manual_seed(0)
    model, splits = team_code.net(), team_code.data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(6):
        for x, y in DataLoader(splits["train"], batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    path = tmp_path_factory.mktemp("team") / "net.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def make_run(tmp_path: Path, body: str, *, checkpoint: Path | None = None, model: str = "net", cache=None,
             name: str = "team", model_lines: str = "", train_lines: str = "") -> RecipeRun:
    """``model_lines`` / ``train_lines``: more keys for the recipe's [model] / [train] tables."""
    weights = f'checkpoint = "{checkpoint}"' if checkpoint is not None else ""
    path = tmp_path / f"{name}.toml"
    head = HEAD.format(model=model, weights=weights + "\n" + model_lines)
    path.write_text(head.replace("[train]\n", "[train]\n" + train_lines, 1) + body)
    import tempfile

    return RecipeRun(load_recipe(path), device="cpu", seed=0, cache=cache, threads=1,
                     workdir=lambda: Path(tempfile.mkdtemp(dir=tmp_path, prefix="work-")))


def verdicts(run: RecipeRun) -> dict:
    out = {}
    for ref in run.recipe.budgets.refs():
        try:
            check_budget(ref, run)
            out[ref[1] if ref[0] is None else f"{ref[0]}::{ref[1]}"] = "passed"
        except AssertionError as exc:
            out[ref[1] if ref[0] is None else f"{ref[0]}::{ref[1]}"] = str(exc)
    return out


ONE_STEP = '[[steps]]\nkind = "quantize"\ncalib_batches = 1\n[budgets]\nsize_below = "50%"\n'

CUSTOM = """
[[steps]]
kind = "custom"
name = "{stage}"
function = "team_code:{function}"
checkpoint = "{checkpoint}"
{extra}
"""


# -- a trained baseline ------------------------------------------------------------------------------------

def test_the_baseline_is_loaded_from_the_checkpoint_not_trained(tmp_path, checkpoint):
    from safetensors.torch import load_file

    import team_code

    team_code.CALLS.clear()
    run = make_run(tmp_path, CUSTOM.format(stage="quantized", function="quantize_int8", checkpoint="modelopt",
                                           extra="") + "[budgets]\nsize_below = \"40%\"\n", checkpoint=checkpoint)
    base = run.artifact("baseline")
    assert base.info["loaded_from"] == str(checkpoint) and len(base.info["sha256"]) == 64
    assert "history" not in base.info  # no [train] run
    for name, tensor in load_file(str(checkpoint)).items():
        assert torch.equal(base.model.state_dict()[name], tensor), name
    assert base.metrics.test_acc > 0.7
    assert verdicts(run) == {"baseline_accuracy_at_least": "passed", "size_below": "passed"}


def test_a_factory_that_returns_a_trained_model_is_built_not_trained_and_keyed_by_its_weights(tmp_path, checkpoint):
    """``model.pretrained = true``: no [train] run; the key holds the weights the factory returned, so new
    weights behind an unchanged factory rebuild every stage (the factory's source alone would not)."""
    import shutil

    from safetensors.torch import load_file, save_file

    import team_code

    weights = tmp_path / "registry" / "net.safetensors"
    weights.parent.mkdir()
    shutil.copy(checkpoint, weights)
    lines = f'options = {{ weights = "{weights}" }}\npretrained = true\n'
    team_code.CALLS.clear()
    run = make_run(tmp_path, ONE_STEP, model="trained_net", model_lines=lines)
    base = run.artifact("baseline")
    assert "history" not in base.info and "a trained model from its factory" in base.info["loaded_from"]
    for name, tensor in load_file(str(checkpoint)).items():
        assert torch.equal(base.model.state_dict()[name], tensor), name
    assert "fit" not in team_code.CALLS and base.metrics.test_acc > 0.7
    assert verdicts(run) == {"baseline_accuracy_at_least": "passed", "size_below": "passed"}
    keys = {s: m["key"] for s, m in run.keys.items()}
    state = load_file(str(weights))
    state["head.weight"] = state["head.weight"] * 1.01  # the team published new weights, same factory
    save_file(state, str(weights))
    again = make_run(tmp_path, ONE_STEP, model="trained_net", model_lines=lines, name="again")
    assert all(again.keys[s]["key"] != keys[s] for s in keys)


def test_a_trained_baseline_that_fails_the_floor_fails_it(tmp_path):
    """The baseline floor still applies to a loaded checkpoint: untrained weights shipped by mistake."""
    from safetensors.torch import save_file

    import team_code

    untrained = tmp_path / "untrained.safetensors"
    save_file({k: v.contiguous() for k, v in team_code.net().state_dict().items()}, str(untrained))
    got = verdicts(make_run(tmp_path, ONE_STEP, checkpoint=untrained))
    assert "optcheck budget 'baseline_accuracy_at_least' failed" in got["baseline_accuracy_at_least"]


def test_the_teams_train_function_trains_the_baseline_and_fine_tuning_inherits_it(tmp_path):
    """``[train] function``: the baseline is trained by the team's loop (its return value kept as the
    stage's history), and a finetune step without its own function uses the same loop."""
    import team_code

    body = '[[steps]]\nkind = "finetune"\nepochs = 1\n[budgets]\naccuracy_drop_under = 0.2\n'
    team_code.CALLS.clear()
    run = make_run(tmp_path, body, train_lines='function = "team_code:fit"\noptions = { lr = 0.003 }\n')
    base = run.artifact("baseline")
    assert base.info["history"] == {"epochs": 3, "distilling": False}  # fit's own return value
    assert team_code.CALLS.get("fit") == 1 and base.metrics.test_acc > 0.5
    tuned = run.artifact("finetuned")
    assert team_code.CALLS.get("fit") == 2 and tuned.info["history"] == {"epochs": 1, "distilling": False}
    assert verdicts(run) == {"baseline_accuracy_at_least": "passed", "accuracy_drop_under": "passed"}


def test_a_checkpoint_pins_the_split_so_no_seed_tests_on_its_training_images(tmp_path, checkpoint):
    body = CUSTOM.format(stage="quantized", function="quantize_int8", checkpoint="modelopt", extra="")
    unpinned = tmp_path / "unpinned.toml"
    unpinned.write_text(HEAD.format(model="net", weights=f'checkpoint = "{checkpoint}"').replace("split_seed = 0\n", "")
                        + body + "[budgets]\nsize_below = \"40%\"\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(unpinned)
    message = str(err.value)
    assert "unpinned.toml" in message and "data.split_seed" in message and "images the checkpoint was trained on" in message
    assert "fix: set data.split_seed" in message

    # pinned: a run under another seed tests the same images (and the run's seed still seeds the rest)
    pinned = make_run(tmp_path, body + "[budgets]\nsize_below = \"40%\"\n", checkpoint=checkpoint)
    other = RecipeRun(pinned.recipe, device="cpu", seed=7, cache=None, threads=1,
                      workdir=lambda: tmp_path / "other")
    a, b = pinned.ctx.data.test, other.ctx.data.test
    assert len(a) == len(b) and all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))
    assert other.ctx.seed == 7


def test_the_cache_key_is_the_checkpoints_content_not_its_path(tmp_path, checkpoint):
    import os
    import shutil

    from optcheck.pipeline.keys import stage_keys

    body = CUSTOM.format(stage="quantized", function="quantize_int8", checkpoint="modelopt", extra="")
    body += "[budgets]\nsize_below = \"40%\"\n"
    run = make_run(tmp_path, body, checkpoint=checkpoint)
    keys = {s: m["key"] for s, m in run.keys.items()}
    moved = tmp_path / "elsewhere" / "copy.safetensors"
    moved.parent.mkdir()
    shutil.copy(checkpoint, moved)
    os.utime(moved, (1, 1))
    again = make_run(tmp_path, body, checkpoint=moved, name="moved")
    assert {s: m["key"] for s, m in again.keys.items()} == keys  # moved and touched: nothing rebuilds
    edited = tmp_path / "edited.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(str(checkpoint))
    state["features.0.weight"] = state["features.0.weight"] * 1.01
    save_file(state, str(edited))
    changed = make_run(tmp_path, body, checkpoint=edited, name="edited")
    assert all(changed.keys[s]["key"] != keys[s] for s in keys)  # every stage below it
    assert stage_keys  # (imported for the reader: keys.stage_keys builds these)


def test_an_edited_checkpoint_rebuilds_every_stage_and_replays_no_stale_verdict(pytester, checkpoint):
    """Through pytest: a warm session replays the verdicts; the checkpoint edited after it (same path),
    every stage is built again and every verdict judged live."""
    import shutil

    from safetensors.torch import load_file, save_file

    (pytester.path / "ckpt").mkdir()
    target = pytester.path / "ckpt" / "net.safetensors"
    shutil.copy(checkpoint, target)
    (pytester.path / "recipes").mkdir()
    (pytester.path / "recipes" / "team.toml").write_text(
        HEAD.format(model="net", weights='checkpoint = "../ckpt/net.safetensors"')
        + CUSTOM.format(stage="quantized", function="quantize_int8", checkpoint="modelopt", extra="")
        + "[budgets]\nsize_below = \"40%\"\naccuracy_drop_under = 0.1\n")
    args = ("--optcheck", "--optcheck-ledger", "off", "-p", "no:cacheprovider", "--optcheck-report", "r.json")
    first = pytester.runpytest_inprocess(*args)
    first.assert_outcomes(passed=3)
    first.stdout.fnmatch_lines(["baseline: loaded from ../ckpt/net.safetensors (sha256 *), not trained"])
    warm = pytester.runpytest_inprocess(*args)
    assert "from the cache (nothing they depend on changed" in warm.stdout.str()
    state = load_file(str(target))
    state["features.0.weight"] = -state["features.0.weight"]  # the team retrained: another model at the same path
    save_file(state, str(target))
    edited = pytester.runpytest_inprocess(*args)
    out = edited.stdout.str()
    assert "verdict from the cache" not in out
    [recipe] = json.loads((pytester.path / "r.json").read_text())["recipes"]
    events = {stage: info["events"][0]["cache"] for stage, info in recipe["stages"].items()}
    assert events == {"baseline": "built", "quantized": "built"}, events


def test_a_checkpoint_of_another_architecture_is_one_error_naming_the_file_and_the_key(tmp_path, checkpoint):
    run = make_run(tmp_path, ONE_STEP, checkpoint=checkpoint, model="wide_net")
    with pytest.raises(RecipeError) as info:
        run.preflight()
    message = str(info.value)
    assert "field 'model.checkpoint'" in message and str(checkpoint) in message
    assert "features.0.weight is [16, 3, 3, 3] in the checkpoint and [24, 3, 3, 3] in the model" in message
    assert message.count("\n") < 5


@pytest.mark.parametrize(("make", "needles"), [
    (lambda tmp, ck: tmp / "nowhere.safetensors", ["no checkpoint file at", "nowhere.safetensors"]),
    (lambda tmp, ck: _saved(tmp / "wrapped.pt", {"model": _state(ck), "epoch": 3}),
     ["is not a state dict", "checkpoint_key = 'model'"]),
    (lambda tmp, ck: _saved(tmp / "pickled.pt", {"model": torch.nn.Linear(2, 2)}),
     ["does not load", "save model.state_dict() alone"]),
], ids=["missing", "a_wrapper_dict", "pickled_objects"])
def test_a_checkpoint_that_cannot_be_read_says_why_and_the_fix(tmp_path, checkpoint, make, needles):
    path = make(tmp_path, checkpoint)
    run = make_run(tmp_path, ONE_STEP, checkpoint=path)
    with pytest.raises(RecipeError) as info:
        run.preflight()
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def _state(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _saved(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def test_a_checkpoint_key_picks_the_state_dict_from_a_wrapper(tmp_path, checkpoint):
    wrapped = _saved(tmp_path / "wrapped.pt", {"model": _state(checkpoint), "epoch": 3})
    path = tmp_path / "team.toml"
    path.write_text(HEAD.format(model="net", weights=f'checkpoint = "{wrapped}"\ncheckpoint_key = "model"')
                    + ONE_STEP)
    run = RecipeRun(load_recipe(path), device="cpu", seed=0, threads=1, workdir=lambda: tmp_path)
    assert run.artifact("baseline").metrics.test_acc > 0.7


def test_torchvision_weights_missing_from_the_hub_cache_name_the_file_and_never_download(tmp_path, monkeypatch):
    from optcheck.build.models import build_model
    from optcheck.recipes.schema import ModelConfig

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr("torch.hub.load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    cfg = ModelConfig(name="torchvision:resnet18", options={"weights": "DEFAULT"})
    assert cfg.trained
    with pytest.raises(RecipeError) as info:
        build_model(cfg, 1000, path="r.toml")
    message = str(info.value)
    assert "not in the local torch hub cache" in message and "IMAGENET1K_V1" in message
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message


# -- the team's metrics -------------------------------------------------------------------------------------

METRICS = """
[[metrics]]
name = "brier"
function = "team_code:brier"
better = "lower"

[[metrics]]
name = "f1"
function = "team_code:macro_f1"
better = "higher"
primary = true

[[metrics]]
name = "right"
function = "team_code:correct"
better = "higher"
"""


def test_a_lower_is_better_metric_made_worse_fails_in_its_direction_with_its_interval(tmp_path, checkpoint):
    body = METRICS + CUSTOM.format(stage="damaged", function="damage", checkpoint="state_dict",
                                   extra="options = { std = 0.2 }")
    body += ("[budgets]\nmetric_drop_under = { brier = 0.05, f1 = 0.5, right = 0.5 }\n"
             "metric_at_most = { brier = 0.3 }\nmetric_at_least = { f1 = 0.3 }\n")
    run = make_run(tmp_path, body, checkpoint=checkpoint)
    base, dmg = run.artifact("baseline").metrics.extra, run.artifact("damaged").metrics.extra
    assert dmg["brier"] > base["brier"] + 0.05  # worse is *higher* for Brier
    got = verdicts(run)
    message = got["metric_drop_under[brier]"]
    assert "optcheck budget 'metric_drop_under[brier]' failed" in message
    assert "brier (lower is better)" in message and "worse" in message
    assert "paired bootstrap" in message and "interval" in message  # per-sample values: an interval
    assert "optcheck budget 'metric_at_most[brier]' failed" in got["metric_at_most[brier]"]
    assert got["metric_drop_under[f1]"] == got["metric_drop_under[right]"] == "passed"
    assert got["metric_at_least[f1]"] == "passed"
    # the same budgets on an undamaged copy pass: the detector's other side
    clean = make_run(tmp_path, body.replace("std = 0.2", "std = 0.0"), checkpoint=checkpoint, name="clean")
    assert all(v == "passed" for v in verdicts(clean).values()), verdicts(clean)


def test_a_relative_metric_drop_is_a_share_of_the_baseline_in_the_bad_direction(tmp_path, checkpoint):
    """``metric_drop_under = { brier = "N%" }`` (NNCF's relative drop): the limit is N% of the baseline's
    value; the damaged model's Brier score rose by a share r of it, so r/2 fails and 2r passes."""
    damaged = METRICS + CUSTOM.format(stage="damaged", function="damage", checkpoint="state_dict",
                                      extra="options = { std = 0.15 }")
    probe = make_run(tmp_path, damaged + '[budgets]\nmetric_drop_under = { brier = "1%" }\n', checkpoint=checkpoint,
                     name="probe")
    base, dmg = probe.artifact("baseline").metrics.extra["brier"], probe.artifact("damaged").metrics.extra["brier"]
    share = (dmg - base) / base * 100
    assert 10 < share < 50, share  # worse is higher for Brier: a clear rise
    tight = make_run(tmp_path, damaged + f'[budgets]\nmetric_drop_under = {{ brier = "{share / 2:.1f}%" }}\n',
                     checkpoint=checkpoint, name="tight")
    message = verdicts(tight)["metric_drop_under[brier]"]
    assert "optcheck budget 'metric_drop_under[brier]' failed" in message and f"{share / 2:.1f}%" in message
    loose = make_run(tmp_path, damaged + f'[budgets]\nmetric_drop_under = {{ brier = "{share * 2:.1f}%" }}\n',
                     checkpoint=checkpoint, name="loose")
    assert verdicts(loose) == {"baseline_accuracy_at_least": "passed", "metric_drop_under[brier]": "passed"}
    with pytest.raises(RecipeError, match=r"field 'budgets\.metric_drop_under\.brier': '150%' must be a percentage"):
        make_run(tmp_path, damaged + '[budgets]\nmetric_drop_under = { brier = "150%" }\n', name="over")


@pytest.mark.parametrize(("budget", "metric", "fix"), [("metric_at_least", "brier", "metric_at_most.brier"),
                                                       ("metric_at_most", "f1", "metric_at_least.f1")])
def test_a_bound_on_a_metrics_good_side_is_refused_with_the_other_bound_as_the_fix(tmp_path, budget, metric, fix):
    path = tmp_path / "team.toml"
    path.write_text(HEAD.format(model="net", weights="") + METRICS + ONE_STEP.replace(
        "[budgets]\n", f"[budgets]\n{budget} = {{ {metric} = 0.5 }}\n"))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert f"budgets.{budget}.{metric}" in message and f"use {fix}" in message


def test_single_number_metrics_get_a_point_verdict_that_says_so_and_flags_get_newcombe(tmp_path, checkpoint):
    from optcheck.budgets.judges import check_budget

    body = METRICS + CUSTOM.format(stage="damaged", function="damage", checkpoint="state_dict",
                                   extra="options = { std = 0.2 }")
    body += "[budgets]\nmetric_drop_under = { f1 = 0.001, right = 0.001 }\n"
    run = make_run(tmp_path, body, checkpoint=checkpoint)
    record: dict = {}
    with pytest.raises(AssertionError, match="one number per split: no interval"):
        check_budget("metric_drop_under[f1]", run, record=record)
    assert record["ci_low"] is None
    record = {}
    with pytest.raises(AssertionError, match="newcombe"):
        check_budget("metric_drop_under[right]", run, record=record)
    assert record["ci_low"] <= record["drop"] <= record["ci_high"]


@pytest.mark.parametrize(("function", "needles"), [
    ("nan_metric", ["returned nan (not a finite number)"]),
    ("short_metric", ["returned values of shape (3,)", "one value per sample (80"]),
    ("text_metric", ["returned 'good' (str)"]),
    ("raising_metric", ["raised KeyError: 'label_map'", "team_code.py:"]),
])
def test_a_broken_metric_is_one_error_naming_the_function_and_what_it_returned(tmp_path, checkpoint, function,
                                                                                needles):
    body = f'[[metrics]]\nname = "m"\nfunction = "team_code:{function}"\nbetter = "higher"\n' + ONE_STEP
    run = make_run(tmp_path, body, checkpoint=checkpoint)
    with pytest.raises(RecipeError) as info:
        run.artifact("baseline")
    message = str(info.value)
    assert f"field 'metrics[0].function': team_code:{function}" in message
    for needle in needles:
        assert needle in message, message


def test_metrics_reach_the_table_the_report_the_step_summary_the_ledger_and_the_plot(pytester, checkpoint,
                                                                                    monkeypatch):
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    (pytester.path / "recipes").mkdir()
    (pytester.path / "recipes" / "team.toml").write_text(
        HEAD.format(model="net", weights=f'checkpoint = "{checkpoint}"') + METRICS
        + CUSTOM.format(stage="quantized", function="quantize_int8", checkpoint="modelopt", extra="")
        + "[budgets]\nmetric_drop_under = { brier = \"50%\", f1 = 0.1 }\n")
    result = pytester.runpytest_inprocess("--optcheck", "--optcheck-update-all", "-p", "no:cacheprovider",
                                          "--optcheck-report", "r.json", "--optcheck-plot", "p.png", "-v")
    result.assert_outcomes(passed=5)
    out = result.stdout.str()
    assert "brier" in out and "f1" in out and "right" in out  # table columns
    result.stdout.fnmatch_lines(["*team.toml::metric_drop_under?brier? PASSED*"])
    [recipe] = json.loads((pytester.path / "r.json").read_text())["recipes"]
    assert set(recipe["stages"]["quantized"]["metrics"]["extra"]) == {"brier", "f1", "right"}
    assert recipe["primary_metric"] == {"name": "f1", "better": "higher"}
    assert "| brier | f1 | right |" in summary.read_text()
    ledger = (pytester.path / "recipes" / "optcheck-ledger.toml").read_text()
    assert "brier = " in ledger and "f1 = " in ledger
    again = pytester.runpytest_inprocess("--optcheck", "-p", "no:cacheprovider")
    again.assert_outcomes(passed=5)  # the ledger holds the metrics, and they are judged against it
    assert (pytester.path / "p.png").stat().st_size > 10_000


# -- the team's training loop --------------------------------------------------------------------------------

FINETUNE = """
[[steps]]
kind = "finetune"
epochs = 2
function = "team_code:{function}"
options = {{ lr = 3e-3 }}
{extra}
"""


@pytest.mark.parametrize(("function", "passes"), [("fit", True), ("fit_nothing", False)])
def test_a_training_function_that_silently_does_nothing_fails_the_metric_budget(tmp_path, checkpoint, function,
                                                                                 passes):
    import team_code

    team_code.CALLS.clear()
    body = METRICS + CUSTOM.format(stage="damaged", function="damage", checkpoint="state_dict",
                                   extra="options = { std = 0.8 }")
    body += FINETUNE.format(function=function, extra="") + "[budgets]\nmetric_drop_under = { f1 = 0.05 }\n"
    run = make_run(tmp_path, body, checkpoint=checkpoint)
    got = verdicts(run)["metric_drop_under[f1]"]
    assert team_code.CALLS[function] == 1
    assert (got == "passed") is passes, got
    if not passes:
        assert "optcheck budget 'metric_drop_under[f1]' failed" in got and "f1 (higher is better)" in got


def test_the_training_function_contract_is_checked(tmp_path, checkpoint):
    body = FINETUNE.format(function="fit_returns_loss", extra="") + "[budgets]\naccuracy_drop_under = 0.5\n"
    run = make_run(tmp_path, body, checkpoint=checkpoint)
    with pytest.raises(StepError, match=r"team_code:fit_returns_loss returned float: a training function trains "
                                        r"the model in place and returns None or a dict"):
        run.artifact("finetuned")


@pytest.mark.parametrize("function", ["fit", "fit_own_loss"])
def test_distillation_with_the_teams_loop_gets_model_optimizers_kd_loss(tmp_path, checkpoint, function):
    """Through training.criterion, or model.compute_kd_loss with its own loss: the teacher stays frozen
    (optcheck checks it), the student is exported, and it round-trips."""
    body = CUSTOM.format(stage="damaged", function="damage", checkpoint="state_dict", extra="options = { std = 0.5 }")
    body += FINETUNE.format(function=function, extra="distill = { temperature = 2.0 }")
    body += "[budgets]\naccuracy_drop_under = 0.2\nrestore_roundtrip = true\n"
    run = make_run(tmp_path, body, checkpoint=checkpoint)
    tuned = run.artifact("finetuned")
    assert tuned.metrics.test_acc > run.artifact("damaged").metrics.test_acc
    import modelopt.torch.opt as mto

    assert "kd_loss" not in [m for m, _ in mto.modelopt_state(tuned.model)["modelopt_state_dict"]]  # exported
    assert verdicts(run) == {"baseline_accuracy_at_least": "passed", "accuracy_drop_under": "passed",
                             "restore_roundtrip": "passed"}


def test_qat_with_the_teams_loop(tmp_path, checkpoint):
    body = '[[steps]]\nkind = "quantize"\ncalib_batches = 2\n' + FINETUNE.format(function="fit", extra="")
    body += "[budgets]\naccuracy_drop_under = 0.2\nrestore_roundtrip = true\nsize_below = \"40%\"\n"
    run = make_run(tmp_path, body, checkpoint=checkpoint)
    assert run.artifact("finetuned").info["history"]["epochs"] == 2
    assert all(v == "passed" for v in verdicts(run).values()), verdicts(run)


# -- the team's compression code -----------------------------------------------------------------------------

def test_the_fastnas_score_and_the_calibration_loop_are_the_teams(tmp_path, checkpoint):
    import team_code

    team_code.CALLS.clear()
    body = ('[[steps]]\nkind = "fastnas"\nflops = "70%"\nchannel_divisor = 8\nfeature_divisor = 8\n'
            'calib_batches = 2\nscore = "team_code:score_on_val"\n'
            '[[steps]]\nkind = "quantize"\ncalib_batches = 3\nforward_loop = "team_code:calibrate"\n'
            "[budgets]\nflops_below = \"75%\"\nrestore_roundtrip = true\n")
    run = make_run(tmp_path, body, checkpoint=checkpoint)
    assert all(v == "passed" for v in verdicts(run).values()), verdicts(run)
    assert team_code.CALLS["score_on_val"] == run.artifact("pruned").info["subnets_scored"] > 0
    assert team_code.CALLS["calibrate"] == 1 and run.artifact("quantized").info["calibration_batches"] == 3
    one_arg = make_run(tmp_path, body.replace("score_on_val", "score"), checkpoint=checkpoint, name="one")
    one_arg.artifact("pruned")
    assert team_code.CALLS["score"] > 0  # Model Optimizer's own score_func(model) signature
    broken = make_run(tmp_path, body.replace("score_on_val", "not_a_number_score"), checkpoint=checkpoint,
                      name="broken")
    with pytest.raises(StepError, match="the score function team_code:not_a_number_score returned str 'high'"):
        broken.artifact("pruned")


def test_a_search_that_misses_its_flops_target_fails_the_step_exactly_with_model_optimizers_verdict(tmp_path):
    """The check is exact (optcheck's count is Model Optimizer's). A flat score leaves the smallest
    widths most "sensitive", so the binary search never tries them: for a 41% target mtp.prune returns a
    42.6% subnet with best is_satisfied = False and no warning (inside the 5% slack the check once had)."""
    body = ('[[steps]]\nkind = "fastnas"\nflops = "{flops}"\nchannel_divisor = 8\nfeature_divisor = 8\n'
            'calib_batches = 1\nscore = "team_code:plateau_score"\n[budgets]\nflops_below = "60%"\n')
    with pytest.raises(StepError) as err:
        make_run(tmp_path, body.format(flops="41%")).artifact("pruned")
    message = str(err.value)
    assert "over the step's own constraint flops = '41%'" in message and "(42.6% of the baseline)" in message
    assert "best is_satisfied = False, 0 subnets satisfied the constraint" in message
    assert "steps[0]" in message and "fix:" in message
    met = make_run(tmp_path, body.format(flops="50%"), name="met").artifact("pruned")  # the same subnet meets 50%
    assert met.info["search"] == {"is_satisfied": True, "num_satisfied": met.info["search"]["num_satisfied"],
                                  "count": met.metrics.flops} and met.info["search"]["num_satisfied"] > 0


@pytest.mark.parametrize(("function", "engine"), [("quantize_int8", "modelopt"), ("damage", "state_dict"),
                                                  ("halve_channels", "torch_pruning")])
def test_a_custom_step_saves_and_restores_as_it_declares(tmp_path, checkpoint, function, engine):
    body = CUSTOM.format(stage="compressed", function=function, checkpoint=engine, extra="")
    body += "[budgets]\nrestore_roundtrip = true\n"
    cache = ArtifactCache(tmp_path / "cache")
    run = make_run(tmp_path, body, checkpoint=checkpoint, cache=cache)
    assert verdicts(run) == {"baseline_accuracy_at_least": "passed", "restore_roundtrip": "passed"}
    built = run.artifact("compressed")
    warm = make_run(tmp_path, body, checkpoint=checkpoint, cache=ArtifactCache(tmp_path / "cache"))
    again = warm.artifact("compressed")
    assert warm.events["compressed"]["cache"] == "hit"
    x = torch.randn(4, 3, 16, 16)
    assert torch.equal(built.model.eval()(x), again.model.eval()(x))


def test_a_compression_function_that_returns_the_model_unchanged_fails_the_size_and_flops_budgets(tmp_path,
                                                                                                 checkpoint):
    body = CUSTOM.format(stage="compressed", function="unchanged", checkpoint="modelopt", extra="")
    body += "[budgets]\nsize_below = \"40%\"\nflops_below = \"80%\"\n"
    got = verdicts(make_run(tmp_path, body, checkpoint=checkpoint))
    assert "optcheck budget 'size_below' failed" in got["size_below"]
    assert "optcheck budget 'flops_below' failed" in got["flops_below"]
    quantized = verdicts(make_run(tmp_path, body.replace("unchanged", "quantize_int8"), checkpoint=checkpoint,
                                  name="q"))
    assert quantized["size_below"] == "passed"  # the detector's other side


def test_onnx_parity_and_latency_judge_a_custom_steps_model_like_a_built_in_ones(tmp_path, checkpoint):
    """The team's own pruning (Torch-Pruning, halved channels) exported to ONNX and timed against the
    baseline in onnxruntime; the other side of each detector: a parity limit no float export meets, and a
    speed-up an unchanged model cannot show."""
    latency = '[latency]\nruntime = "onnxruntime"\nrounds = 60\nwarmup_rounds = 10\n'
    budgets = ("[budgets]\nonnx_max_abs_diff = 1e-4\nonnx_top1_agreement = 0.99\n"
               "latency_ratio_below = 1.5\n")
    halved = make_run(tmp_path, CUSTOM.format(stage="compressed", function="halve_channels",
                                              checkpoint="torch_pruning", extra="") + budgets + latency,
                      checkpoint=checkpoint)
    assert verdicts(halved) == {"baseline_accuracy_at_least": "passed", "onnx_max_abs_diff": "passed",
                                "onnx_top1_agreement": "passed", "latency_ratio_below": "passed"}
    strict = make_run(tmp_path, CUSTOM.format(stage="compressed", function="unchanged", checkpoint="modelopt",
                                              extra="") + "[budgets]\nonnx_max_abs_diff = 1e-12\n"
                      "speedup_at_least = 1.5\n" + latency, checkpoint=checkpoint, name="strict")
    got = verdicts(strict)
    assert "optcheck budget 'onnx_max_abs_diff' failed" in got["onnx_max_abs_diff"]
    assert "max |diff|" in got["onnx_max_abs_diff"]
    assert "optcheck budget 'speedup_at_least' failed" in got["speedup_at_least"]


def test_a_compression_function_that_returns_nothing_names_itself(tmp_path, checkpoint):
    body = CUSTOM.format(stage="compressed", function="returns_none", checkpoint="modelopt", extra="")
    run = make_run(tmp_path, body + "[budgets]\nrestore_roundtrip = true\n", checkpoint=checkpoint)
    with pytest.raises(StepError, match="team_code:returns_none returned NoneType, not the compressed"):
        run.artifact("compressed")


def test_a_searched_custom_step_has_calibrated_not_exact_architecture(tmp_path, checkpoint):
    body = CUSTOM.format(stage="compressed", function="halve_channels", checkpoint="torch_pruning",
                         extra="searched = true") + "[budgets]\nrestore_roundtrip = true\n"
    run = make_run(tmp_path, body, checkpoint=checkpoint)
    assert run.fixed_architecture("baseline") and not run.fixed_architecture("compressed")


# -- a package's own step kind (entry point) ---------------------------------------------------------------

KIND_MODULE = '''
from typing import Literal
from optcheck.steps.base import StepConfig, StepKind

class HalfStep(StepConfig):
    kind: Literal["acme_half"]

def build(run, parent):
    import torch_pruning as tp
    import torch
    model = parent.model.eval()
    tp.pruner.MagnitudePruner(model, run.ctx.dummy_input(), importance=tp.importance.GroupMagnitudeImportance(p=2),
                              pruning_ratio=0.5, ignored_layers=[model.head]).step()
    path = run.file("torch_pruning.pth")
    torch.save(tp.state_dict(model), path)
    return run.finish(model, {"torch_pruning": path})

KIND = StepKind(kind="acme_half", stage="halved", build=build, schema=HalfStep, checkpoint="torch_pruning",
                load=lambda ctx, files, step: __import__("optcheck.steps.torch_pruning", fromlist=["load"]).load(ctx, files))
'''


def _package(site: Path, value: str, module: str = KIND_MODULE) -> Path:
    site.mkdir(parents=True, exist_ok=True)
    (site / "acme_kinds.py").write_text(module)
    info = site / "acme_kinds-1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-kinds\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[optcheck.steps]\nacme_half = {value}\n")
    return site


def test_a_package_registers_its_own_step_kind_through_an_entry_point(tmp_path, checkpoint):
    import os
    import subprocess

    site = _package(tmp_path / "site", "acme_kinds:KIND")
    recipe = tmp_path / "r.toml"
    recipe.write_text(HEAD.format(model="net", weights=f'checkpoint = "{checkpoint}"')
                      + '[[steps]]\nkind = "acme_half"\n[budgets]\nflops_below = "60%"\nrestore_roundtrip = true\n')
    code = (f"import sys; sys.path.insert(0, {str(TEAM)!r})\n"
            "from optcheck.steps.registry import listable; print(listable())\n"
            "from optcheck.recipes.loader import load_recipe; from optcheck.pipeline.run import RecipeRun\n"
            "from optcheck.budgets.judges import check_budget\n"
            f"run = RecipeRun(load_recipe({str(recipe)!r}), device='cpu', threads=1)\n"
            "print({b: check_budget(b, run) and 'passed' for b in ('flops_below', 'restore_roundtrip')})\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'acme_half']" in proc.stdout and "{'flops_below': 'passed', 'restore_roundtrip': 'passed'}" in proc.stdout
    broken = _package(tmp_path / "broken", "acme_kinds:nothing_here")
    env["PYTHONPATH"] = str(broken)
    proc = subprocess.run([sys.executable, "-c", "import optcheck.steps.registry"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert ("entry point acme_half = 'acme_kinds:nothing_here' (group 'optcheck.steps', package acme-kinds 1.0) "
            "does not import") in proc.stderr


# -- Model Optimizer in the team's own tests ------------------------------------------------------------------

TEAMS_OWN_PRUNE = '''
import torch
import torch.nn as nn
import modelopt.torch.prune as mtp   # no optcheck import anywhere before this


def test_my_fastnas_prune():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.Conv2d(64, 128, 3, padding=1),
                        nn.BatchNorm2d(128), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 4))
    data = [(torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,))) for _ in range(2)]
    sub, _ = mtp.prune(net, mode="fastnas", constraints={"flops": "70%"}, dummy_input=torch.zeros(1, 3, 16, 16),
                       config={"data_loader": data, "score_func": lambda m: 0.5, "verbose": False,
                               "max_iter_data_loader": 2})
'''


def test_a_teams_own_model_optimizer_call_works_in_a_session_with_the_plugin(pytester):
    from optcheck.core.compat import torchprofile_layout

    pytester.makepyfile(test_team=TEAMS_OWN_PRUNE)
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "ignore").assert_outcomes(passed=1)
    if torchprofile_layout() == "handlers":
        pytest.skip("torchprofile 0.0.x installed: Model Optimizer works without the patch")
    bare = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "ignore", "-p", "no:optcheck")
    bare.assert_outcomes(failed=1)  # what a team meets without it
    assert "has no attribute 'handlers'" in bare.stdout.str()
