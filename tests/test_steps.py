"""The step kinds beside FastNAS: quantize, sparsify, finetune with distillation (and QAT), each built,
cached, restored and judged; and the planted regressions each must catch, with numbers in the message.

Each planted regression is made here, by monkeypatching or a small wrapper, never by editing shipped code.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from optcheck.budgets.judges import check_budget
from optcheck.pipeline.cache import ArtifactCache
from optcheck.core.errors import StepError
from optcheck.pipeline.run import RecipeRun
from optcheck.recipes.loader import load_recipe

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

from conftest import TINY_HEAD as HEAD


def make_run(tmp_path: Path, steps: str, budgets: str, cache: ArtifactCache | None = None, name: str = "r") -> RecipeRun:
    path = tmp_path / f"{name}.toml"
    path.write_text(HEAD + steps + "\n[budgets]\n" + budgets)
    import tempfile

    return RecipeRun(load_recipe(path), device="cpu", seed=0, cache=cache, threads=1,
                     workdir=lambda: Path(tempfile.mkdtemp(dir=tmp_path, prefix="work-")))


def build_all(run: RecipeRun) -> dict:
    return {stage: run.artifact(stage) for stage in run.available_stages()}


def judge(run: RecipeRun) -> dict:
    """Every budget: (stage, name) -> "passed" or the failure message."""
    out = {}
    for ref in run.recipe.budgets.refs():
        try:
            check_budget(ref, run)
            out[ref] = "passed"
        except AssertionError as exc:
            out[ref] = str(exc)
    return out


QUANTIZE = '[[steps]]\nkind = "quantize"\nformat = "int8"\ncalib_batches = 4\n'
QUANT_BUDGETS = 'accuracy_drop_under = 0.05\nsize_below = "30%"\nrestore_roundtrip = true\n'


def test_the_registry_knows_every_kind_and_its_stage():
    from optcheck.steps.registry import KINDS, listable

    assert listable() == ["fastnas", "torch_pruning", "finetune", "quantize", "sparsify", "custom"]
    assert {k: v.stage for k, v in KINDS.items()} == {
        "baseline": "baseline", "fastnas": "pruned", "torch_pruning": "pruned", "finetune": "finetuned",
        "quantize": "quantized", "sparsify": "sparsified", "custom": "compressed"}
    assert [k for k, v in KINDS.items() if v.searched is True] == ["fastnas"]
    assert not KINDS["custom"].searched_for(SimpleNamespace(searched=False))
    assert KINDS["custom"].searched_for(SimpleNamespace(searched=True))  # a custom step says so itself


def test_generic_modules_name_no_stage_or_kind():
    """The pipeline, keys, ledger, reports, plot, items and plugin are written over "stages in order"."""
    import ast

    names = {"baseline", "pruned", "restored", "finetuned", "quantized", "sparsified", "fastnas", "finetune",
             "quantize", "sparsify"}
    here = Path(__file__).resolve().parents[1] / "optcheck"
    found = []
    for module in ("pipeline/run", "pipeline/keys", "pipeline/store", "pipeline/events", "pipeline/checkpoints",
                   "ledger/entries", "report/render", "report/plot", "plugin/items", "plugin/__init__",
                   "plugin/session", "plugin/finish"):
        tree = ast.parse((here / f"{module}.py").read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                words = {w.strip("'\"[]().,:") for w in node.value.split()}
                if names & words:
                    found.append((module, node.lineno, node.value[:60]))
    assert found == []


def test_int8_post_training_quantization_shrinks_the_weights_keeps_accuracy_and_round_trips(tmp_path):
    run = make_run(tmp_path, QUANTIZE, QUANT_BUDGETS, ArtifactCache(tmp_path / "cache"))
    stages = build_all(run)
    base, quant = stages["baseline"].metrics, stages["quantized"].metrics
    assert quant.flops == base.flops  # fake quantization keeps the fp32 compute
    assert 0.24 < quant.size_bytes / base.size_bytes < 0.30  # 8-bit weights + a scale per channel
    assert stages["quantized"].info["calibration_batches"] == 4
    assert all(v == "passed" for v in judge(run).values()), judge(run)
    # the next session loads it from the cache: the same model, outputs equal
    again = make_run(tmp_path, QUANTIZE, QUANT_BUDGETS, ArtifactCache(tmp_path / "cache"))
    cached = again.artifact("quantized")
    assert again.events["quantized"]["cache"] == "hit" and cached.metrics == quant
    x = next(iter(run.ctx.test_loader))[0][:8]
    assert torch.equal(cached.model.eval()(x), stages["quantized"].model.eval()(x))


def test_a_constant_calibration_batch_is_caught_by_the_accuracy_budget(tmp_path, monkeypatch):
    from optcheck.steps import quantize

    real = quantize.calibration_batches

    def constant(ctx, step):
        for x in real(ctx, step):
            yield torch.zeros_like(x)  # the wrong data: every calibration input is black

    monkeypatch.setattr(quantize, "calibration_batches", constant)
    run = make_run(tmp_path, QUANTIZE, QUANT_BUDGETS)
    verdicts = judge(run)
    message = verdicts[(None, "accuracy_drop_under")]
    assert message != "passed" and "optcheck budget 'accuracy_drop_under' failed" in message
    assert "baseline" in message and "candidate" in message and "pp" in message
    assert verdicts[(None, "size_below")] == "passed"  # the size is right: only the accuracy shows it


def test_a_quantizer_disabled_after_calibration_is_caught_by_the_size_budget(tmp_path, monkeypatch):
    import modelopt.torch.quantization as mtq

    real = mtq.quantize

    def quantize_then_disable(model, config, forward_loop=None):
        model = real(model, config, forward_loop)
        for name, module in model.named_modules():
            if name.endswith("weight_quantizer"):
                module.disable()
        return model

    monkeypatch.setattr(mtq, "quantize", quantize_then_disable)
    verdicts = judge(make_run(tmp_path, QUANTIZE, QUANT_BUDGETS))
    message = verdicts[(None, "size_below")]
    assert "optcheck budget 'size_below' failed" in message and "measured" in message
    assert "100.0% of" in message  # every weight counted at fp32 again
    assert "weight quantizer disabled or missing" in message


def test_a_gpu_only_format_is_a_usage_error_on_cpu(tmp_path):
    from optcheck.core.errors import RecipeError

    run = make_run(tmp_path, QUANTIZE.replace('"int8"', '"nvfp4"'), QUANT_BUDGETS)
    with pytest.raises(RecipeError) as info:
        run.preflight()
    assert "steps[0].format" in str(info.value) and "needs a CUDA GPU" in str(info.value)


SPARSE = '[[steps]]\nkind = "sparsify"\n[[steps]]\nkind = "finetune"\nepochs = 2\nlr_scale = 0.1\n'
SPARSE_BUDGETS = ('accuracy_drop_under = 0.3\nsparsity_at_least = 0.5\nrestore_roundtrip = true\n'
                  '[budgets.sparsified]\nsparsity_at_least = 0.5\n')


def test_sparsity_survives_fine_tuning_and_the_round_trip(tmp_path):
    run = make_run(tmp_path, SPARSE, SPARSE_BUDGETS, ArtifactCache(tmp_path / "cache"))
    stages = build_all(run)
    assert stages["baseline"].metrics.sparsity is None
    assert stages["sparsified"].metrics.sparsity == pytest.approx(0.5)
    assert stages["finetuned"].metrics.sparsity == pytest.approx(0.5)  # the masks stayed applied
    assert all(v == "passed" for v in judge(run).values()), judge(run)
    # FLOPs count what a deployment computes: the dense layers, not Model Optimizer's weight * mask
    # multiply in every forward (it made a 2:4 ResNet20 102.6% of its baseline)
    assert stages["sparsified"].metrics.flops == stages["finetuned"].metrics.flops == stages["baseline"].metrics.flops


def test_the_mask_multiply_of_a_sparsified_layer_is_not_counted_as_compute():
    """The detector: torchprofile does see the mask multiply (counting with it is more than the dense
    model), and count_flops leaves it out (exactly the dense model)."""
    import copy

    from optcheck.build.measure import count_flops, macs_per_node
    from optcheck.build.models import SmallCNN
    from optcheck.core.compat import import_modelopt

    import_modelopt()
    import modelopt.torch.sparsity as mts

    torch.manual_seed(0)
    dense = SmallCNN(num_classes=4, width=64).eval()
    x = torch.zeros(1, 3, 16, 16)
    sparse = mts.sparsify(copy.deepcopy(dense), "sparse_magnitude", config={"verbose": False})
    raw = 2 * sum(m for node, m in macs_per_node(sparse, x).items() if node.operator != "aten::batch_norm")
    assert raw > count_flops(dense, x)  # the mask multiply, as torchprofile counts it
    assert count_flops(sparse, x) == count_flops(dense, x)
    assert any(isinstance(getattr(m, "_weight_mask", None), torch.Tensor) for m in sparse.modules())  # untouched


def test_a_sparsity_mask_lost_on_restore_is_caught(tmp_path, monkeypatch):
    """A session that restores the cached stages (as every warm CI run does) must see the masks."""
    cache = ArtifactCache(tmp_path / "cache")
    build_all(make_run(tmp_path, SPARSE, SPARSE_BUDGETS, cache))
    import modelopt.torch.opt as mto

    real = mto.restore

    def restore_losing_masks(model, path, **kwargs):
        model = real(model, path, **kwargs)
        for module in model.modules():
            if isinstance(getattr(module, "_weight_mask", None), torch.Tensor):
                module._weight_mask.fill_(True)  # the mask forgotten: every weight active again
        return model

    monkeypatch.setattr(mto, "restore", restore_losing_masks)
    verdicts = judge(make_run(tmp_path, SPARSE, SPARSE_BUDGETS, ArtifactCache(tmp_path / "cache")))
    for ref in ((None, "sparsity_at_least"), ("sparsified", "sparsity_at_least")):
        assert "optcheck budget 'sparsity_at_least' failed" in verdicts[ref]
        assert "no sparsified layer" in verdicts[ref]


def test_sparsify_after_quantize_sparsifies_nothing_and_says_so(tmp_path):
    run = make_run(tmp_path, QUANTIZE + '[[steps]]\nkind = "sparsify"\n', "sparsity_at_least = 0.5\n")
    with pytest.raises(StepError) as info:
        run.artifact("sparsified")
    assert "steps[1] (kind = 'sparsify')" in str(info.value) and "before any quantize step" in str(info.value)


DISTILL = ('[[steps]]\nkind = "finetune"\nname = "distilled"\nepochs = 2\nlr_scale = 0.1\n'
           'distill = { temperature = 4.0, kd_loss_weight = 0.5 }\n')


def test_distillation_trains_a_plain_student_and_leaves_the_teacher_alone(tmp_path):
    run = make_run(tmp_path, DISTILL, "accuracy_drop_under = 0.3\nrestore_roundtrip = true\n")
    stages = build_all(run)
    assert type(stages["distilled"].model).__name__ == "SmallCNN"  # mtd.export: the student alone
    assert all(v == "passed" for v in judge(run).values()), judge(run)
    # the key of a distilled stage holds the teacher's key: retraining the baseline rebuilds it
    assert run.keys["distilled"]["teacher"] == run.keys["baseline"]["key"]


def test_a_teacher_in_train_mode_is_caught_by_the_step(tmp_path, monkeypatch):
    import modelopt.torch.distill as mtd

    def forward_with_teacher_in_train_mode(self, *args, **kwargs):
        with torch.no_grad():
            self._teacher_model.train()  # the planted bug: BatchNorm statistics drift with each batch
            self._teacher_model(*args, **kwargs)
        return super(mtd.DistillationModel, self).forward(*args, **kwargs)

    monkeypatch.setattr(mtd.DistillationModel, "forward", forward_with_teacher_in_train_mode)
    run = make_run(tmp_path, DISTILL, "accuracy_drop_under = 0.3\n")
    with pytest.raises(StepError) as info:
        run.artifact("distilled")
    message = str(info.value)
    assert "the teacher changed during distillation" in message and "largest: features." in message
    assert "tensors differ from the baseline's" in message


def test_quantization_aware_training_is_a_finetune_after_quantize(tmp_path):
    steps = QUANTIZE + '[[steps]]\nkind = "finetune"\nname = "qat"\nepochs = 2\nlr_scale = 0.05\n'
    run = make_run(tmp_path, steps, 'accuracy_drop_under = 0.3\nsize_below = "30%"\nrestore_roundtrip = true\n'
                                    "[budgets.quantized]\naccuracy_drop_under = 0.3\n")
    stages = build_all(run)
    assert stages["qat"].metrics.size_bytes == stages["quantized"].metrics.size_bytes  # still 8-bit
    qat = stages["qat"].model
    assert any(type(m).__name__ == "QuantConv2d" for m in qat.modules())
    assert all(v == "passed" for v in judge(run).values()), judge(run)
