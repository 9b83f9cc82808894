"""``kind = "torch_pruning"``: Torch-Pruning's DepGraph pruning as a pipeline step, its checkpoints
(``tp.state_dict``), the stages below it restored into its architecture, and the engine-aware
``assert_restore_roundtrip``; planted regressions caught with numbers in the message."""

from __future__ import annotations

import re

import pytest
import torch

from optcheck.core.errors import StepError
from test_steps import build_all, judge, make_run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TP = '[[steps]]\nkind = "torch_pruning"\nflops = "50%"\niterative_steps = 10\n'
FT = '[[steps]]\nkind = "finetune"\nepochs = 2\nlr_scale = 0.1\n'
QUANT = '[[steps]]\nkind = "quantize"\nformat = "int8"\ncalib_batches = 4\n'
BUDGETS = ('flops_below = "50%"\naccuracy_drop_under = 0.3\nrestore_roundtrip = true\n'
           '[budgets.pruned]\nrestore_roundtrip = true\n[budgets.finetuned]\nrestore_roundtrip = true\n')


@pytest.fixture(scope="module")
def tp_run(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("tp"), TP + FT + QUANT, BUDGETS)
    build_all(run)
    return run


def test_torch_pruning_meets_its_flops_target_step_by_step(tp_run):
    base, pruned = tp_run.artifact("baseline"), tp_run.artifact("pruned")
    rows = pruned.info["iterations"]
    assert 1 <= len(rows) <= 10
    assert all(a["flops"] > b["flops"] for a, b in zip(rows, rows[1:]))  # each step removes channels
    assert rows[-1]["flops"] <= 0.5 * base.metrics.flops < rows[-2]["flops"]  # stops at the first step under it
    assert pruned.metrics.flops == rows[-1]["flops"]  # the one FLOPs convention of every stage
    assert pruned.metrics.params < base.metrics.params
    assert all(0 <= r["val_acc"] <= 1 for r in rows)


def test_every_stage_below_the_subnet_restores_into_its_architecture(tp_run):
    from optcheck.pipeline.checkpoints import load_model

    for stage in ("pruned", "finetuned", "quantized"):
        art = tp_run.artifact(stage)
        assert "torch_pruning" in art.files, (stage, art.files)  # the architecture travels with it
        restored = load_model(tp_run.ctx, tp_run.stages[stage], art.files).eval()
        x = torch.randn(4, *tp_run.ctx.data.input_shape)
        with torch.no_grad():
            assert torch.equal(restored(x), art.model.eval()(x)), stage
    verdicts = judge(tp_run)
    assert set(verdicts.values()) == {"passed"}, verdicts


def test_a_torch_pruning_subnet_restored_with_a_plain_state_dict_fails_with_the_fix(tp_run):
    from optcheck import assert_restore_roundtrip

    model = tp_run.artifact("pruned").model
    x = torch.randn(2, *tp_run.ctx.data.input_shape)
    with pytest.raises(AssertionError) as err:
        assert_restore_roundtrip(model, tp_run.ctx.make_model, example_input=x, engine="state_dict")
    msg = str(err.value)
    assert "state_dict restore raised RuntimeError" in msg and "size mismatch" in msg
    assert "engine='torch_pruning'" in msg
    # the right engine, chosen by itself: the shapes changed and Model Optimizer did not convert it
    restored = assert_restore_roundtrip(model, tp_run.ctx.make_model, example_input=x)
    assert [p.shape for p in restored.parameters()] == [p.shape for p in model.parameters()]


def test_an_unknown_engine_is_refused(tp_run):
    from optcheck import assert_restore_roundtrip

    with pytest.raises(ValueError, match="engine='pickle': use auto, modelopt, torch_pruning, state_dict"):
        assert_restore_roundtrip(tp_run.artifact("baseline").model, tp_run.ctx.make_model,
                                 example_input=torch.zeros(1, 3, 16, 16), engine="pickle")


def test_an_unreachable_target_is_a_step_error_with_numbers(tmp_path):
    run = make_run(tmp_path, TP.replace('"50%"', '"1%"').replace("10", "2"), 'flops_below = "50%"\n')
    with pytest.raises(StepError) as err:
        run.artifact("pruned")
    msg = str(err.value)
    assert "steps[0] (kind = 'torch_pruning')" in msg
    assert re.search(r"the flops target '1%' \(\d[\d,]*\) was not reached: after 2 steps", msg), msg
    assert "raise iterative_steps" in msg


def test_an_ignored_layer_pattern_that_matches_nothing_is_refused(tmp_path):
    run = make_run(tmp_path, TP + 'ignored_layers = ["features.99", "classifier*", "head"]\n', 'flops_below = "50%"\n')
    with pytest.raises(StepError, match=r"ignored_layers pattern\(s\) match no module of the model: features.99, classifier\*\n"):
        run.prepare()


def test_pruning_across_a_channel_padding_shortcut_says_which_layers_to_keep(tmp_path):
    """The built-in resnet20's shortcuts zero-pad channels (F.pad): Torch-Pruning does not follow them,
    the pruned model stops running, and the message gives the ignored_layers that work."""
    from conftest import TINY_HEAD

    head = TINY_HEAD.replace('name = "small_cnn"', 'name = "resnet20"').replace("epochs = 6", "epochs = 1")
    path = tmp_path / "res.toml"
    path.write_text(head + TP + '\n[budgets]\nflops_below = "50%"\n')
    from optcheck.pipeline.run import RecipeRun
    from optcheck.recipes.loader import load_recipe

    run = RecipeRun(load_recipe(path), device="cpu", seed=0, threads=1, workdir=lambda: tmp_path)
    with pytest.raises(StepError) as err:
        run.artifact("pruned")
    msg = str(err.value)
    assert "the model no longer runs" in msg and "F.pad" in msg
    assert 'ignored_layers = ["conv1", "layer*.*.conv2"]' in msg
    path.write_text(head + TP + 'ignored_layers = ["conv1", "layer*.*.conv2"]\n\n[budgets]\nflops_below = "50%"\n')
    run = RecipeRun(load_recipe(path), device="cpu", seed=0, threads=1, workdir=lambda: tmp_path)
    pruned = run.artifact("pruned")
    assert pruned.metrics.flops <= 0.5 * run.artifact("baseline").metrics.flops
    widths = {n: m.out_channels for n, m in pruned.model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert widths["conv1"] == 16 and widths["layer3.0.conv2"] == 64  # the residual stream kept
    assert widths["layer1.0.conv1"] < 16 and widths["layer3.0.conv1"] < 64  # inner channels pruned


@pytest.mark.parametrize(("table", "error"), [
    ('kind = "torch_pruning"\n', "give exactly one of 'pruning_ratio', 'flops' or 'params'"),
    ('kind = "torch_pruning"\nflops = "50%"\npruning_ratio = 0.3\n', "(got pruning_ratio, flops)"),
    ('kind = "torch_pruning"\npruning_ratio = 1.0\n', "pruning_ratio"),
    ('kind = "torch_pruning"\nflops = "50%"\nimportance = "hessian"\n', "importance"),
])
def test_the_step_table_is_checked(tmp_path, table, error):
    from conftest import TINY_HEAD

    from optcheck.core.errors import RecipeError
    from optcheck.recipes.loader import load_recipe

    path = tmp_path / "r.toml"
    path.write_text(TINY_HEAD + "[[steps]]\n" + table + '\n[budgets]\nflops_below = "50%"\n')
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert error in str(err.value)


def test_a_cached_subnet_and_its_descendants_restore_in_a_new_session(tmp_path):
    """Warm: the subnet's and the fine-tuned model's cache entries load (with the architecture file
    the fine-tuned entry carries) and equal what was built."""
    from optcheck.pipeline.cache import ArtifactCache

    cache = ArtifactCache(tmp_path / "cache")
    cold = make_run(tmp_path, TP + FT, 'flops_below = "50%"\nrestore_roundtrip = true\n', cache=cache)
    built = build_all(cold)
    warm = make_run(tmp_path, TP + FT, 'flops_below = "50%"\nrestore_roundtrip = true\n', cache=cache)
    for stage in ("pruned", "finetuned"):
        art = warm.artifact(stage)
        assert warm.events[stage]["cache"] == "hit"
        assert art.info.get("iterations") == built[stage].info.get("iterations")
        x = torch.randn(3, *warm.ctx.data.input_shape)
        with torch.no_grad():
            assert torch.equal(art.model.eval()(x), built[stage].model.eval()(x)), stage
    verdicts = judge(warm)
    assert len(verdicts) == 3 and set(verdicts.values()) == {"passed"}, verdicts  # + the baseline floor
