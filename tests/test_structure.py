"""Structural facts of compressed models (``build.structure``), held exactly by the ledger: the
upgrade breakages that leave accuracy alone at first. Each planted breakage is caught and named."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from optcheck.build.models import SmallCNN
from optcheck.build.structure import describe, structural_facts
from optcheck.ledger.entries import Ledger, judge, new_entry

X = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def quantized():
    from optcheck.core.compat import import_modelopt

    import_modelopt()
    import modelopt.torch.quantization as mtq

    torch.manual_seed(0)
    return mtq.quantize(SmallCNN(4).eval(), mtq.INT8_DEFAULT_CFG, lambda m: m(X))


def test_a_plain_model_has_no_quantizers_masks_or_modes():
    assert structural_facts(SmallCNN(4), X[:1]) == {
        "quant_input": 0, "quant_weight": 0, "quant_output": 0, "quant_bits": "", "amax_missing": 0,
        "amax_nonfinite": 0, "sparse_masks": 0, "modes": "", "onnx_qdq": 0}


def test_an_int8_model_counts_its_quantizers_bits_modes_and_onnx_qdq_nodes(quantized):
    facts = structural_facts(quantized, X[:1])
    # SmallCNN: 3 convs and a linear; INT8_DEFAULT_CFG enables their input and weight quantizers
    assert facts == {"quant_input": 4, "quant_weight": 4, "quant_output": 0, "quant_bits": "input:8 weight:8",
                     "amax_missing": 0, "amax_nonfinite": 0, "sparse_masks": 0, "modes": "quantize max_calibrate",
                     "onnx_qdq": facts["onnx_qdq"]}
    assert facts["onnx_qdq"] >= 16  # a Q and a DQ per enabled quantizer at least
    assert describe(facts).startswith("quantizers input 4 / weight 4 / output 0 (input:8 weight:8), amax all "
                                      "present and finite, ONNX Q/DQ nodes")


def test_sparse_masks_count_the_layers_whose_mask_removes_weights():
    from optcheck.core.compat import import_modelopt

    import_modelopt()
    import modelopt.torch.sparsity as mts

    model = mts.sparsify(SmallCNN(4), "sparse_magnitude", config={"verbose": False})
    facts = structural_facts(model, X[:1])
    assert facts["sparse_masks"] == 2 and facts["modes"] == "sparse_magnitude"  # the 3-channel stem and the
    # head are skipped by Model Optimizer's size rule: their masks remove nothing and do not count


def _ledger_verdict(reference_model, candidate_model):
    recipe = SimpleNamespace(name="r", metrics=[], ledger=SimpleNamespace(
        accuracy_tolerance=0.01, architecture_tolerance=0.05, bytes_tolerance=0.01, metric_tolerance=0.02))
    base = {"test_acc": 0.9, "flops": 100, "params": 10, "ckpt_bytes": 1000}
    entry = new_entry({**base, "structure": structural_facts(reference_model, X[:1])}, None,
                      {"test_acc": 0.01, "flops": 0.0, "params": 0.0, "ckpt_bytes": 0.01})
    ledger = Ledger(path=None, display="optcheck-ledger.toml", entries={("r", "cpu", "quantized"): entry})
    return judge(ledger, recipe, "cpu", "quantized", {**base, "structure": structural_facts(candidate_model, X[:1])},
                 None)


def test_the_ledger_passes_the_same_structure(quantized):
    assert _ledger_verdict(quantized, copy.deepcopy(quantized)).failure is None


def test_all_quantizers_disabled_fails_the_ledger_check_naming_each_count(quantized):
    import modelopt.torch.quantization as mtq

    broken = copy.deepcopy(quantized)
    mtq.disable_quantizer(broken, "*")
    # accuracy could hold (the fp32 model is as good), and the budgets may not look at size: the facts do
    failure = _ledger_verdict(quantized, broken).failure
    assert "[r.cpu.quantized] differs from the ledger optcheck-ledger.toml" in failure
    assert "structure.quant_input: 0 now, 4 in the ledger (a structural fact: must match exactly)" in failure
    assert "structure.quant_weight: 0 now, 4 in the ledger" in failure
    assert "structure.quant_bits: '' now, 'input:8 weight:8' in the ledger" in failure


def test_a_nan_amax_fails_the_ledger_check(quantized):
    broken = copy.deepcopy(quantized)
    broken.features[3].weight_quantizer.amax = torch.full_like(broken.features[3].weight_quantizer.amax,
                                                               float("nan"))
    assert structural_facts(broken)["amax_nonfinite"] == 1
    assert "structure.amax_nonfinite: 1 now, 0 in the ledger" in _ledger_verdict(quantized, broken).failure


def test_an_entry_written_before_the_facts_asks_for_them_and_update_keeps_its_values(quantized):
    recipe = SimpleNamespace(name="r", metrics=[], ledger=SimpleNamespace(
        accuracy_tolerance=0.01, architecture_tolerance=0.05, bytes_tolerance=0.01, metric_tolerance=0.02))
    old = {"test_acc": 0.9, "flops": 100, "params": 10, "ckpt_bytes": 1000, "calibration": "8 runs",
           "tolerance": {"test_acc": 0.02, "flops": 0.0, "params": 0.0, "ckpt_bytes": 0.01}}
    ledger = Ledger(path=None, display="l.toml", entries={("r", "cpu", "quantized"): old})
    measured = {"test_acc": 0.905, "flops": 100, "params": 10, "ckpt_bytes": 1001,
                "structure": structural_facts(quantized, X[:1])}
    plain = judge(ledger, recipe, "cpu", "quantized", measured, None)
    assert "structure: not in the ledger entry yet (record it with --optcheck-update" in plain.failure
    updated = judge(ledger, recipe, "cpu", "quantized", measured, "failed").update
    assert updated == {**old, "structure": measured["structure"]}  # 0.9 and 1000 stay: within tolerance


LOOPS = """
import torch
import modelopt.torch.quantization as mtq


def feed_nan(model, batches):
    for x in batches:
        model(torch.full_like(x, float("nan")))


def disable_all(model, batches):
    for x in batches:
        model(x)
    mtq.disable_quantizer(model, "*")
"""


@pytest.mark.parametrize(("loop", "needles"), [
    # Model Optimizer 0.47 asserts on a NaN amax itself; the step's own check says it too if it does not
    ("feed_nan", ("NaN or infinite amax|detected nan values in amax",)),
    ("disable_all", ("mtq.quantize left none of the model's 18 quantizers enabled: the model is not quantized",)),
])
def test_the_quantize_step_refuses_nan_scales_and_disabled_quantizers(tmp_path, loop, needles):
    """The classes of Model-Optimizer #729 (NaN after calibration) and #104 (all quantizers disabled),
    planted through the team's calibration loop: the step fails before saving, naming the file and step."""
    import importlib
    import re
    import sys

    from optcheck.core.errors import StepError
    from optcheck.pipeline.run import RecipeRun
    from optcheck.recipes.loader import load_recipe

    (tmp_path / "team_loops.py").write_text(LOOPS)
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    try:
        path = tmp_path / "q.toml"
        path.write_text('[data]\ndataset = "synthetic"\nbatch_size = 32\noptions = { samples = 240, classes = 4, '
                        'image_size = 16 }\n[model]\nname = "small_cnn"\n[train]\nepochs = 1\nwarmup_epochs = 0.5\n'
                        f'[[steps]]\nkind = "quantize"\ncalib_batches = 1\nforward_loop = "team_loops:{loop}"\n'
                        '[budgets]\nsize_below = "50%"\n')
        (tmp_path / "w").mkdir()
        run = RecipeRun(load_recipe(path), device="cpu", seed=0, threads=1, workdir=lambda: tmp_path / "w")
        with pytest.raises(StepError) as err:
            run.artifact("quantized")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("team_loops", None)
    message = str(err.value)
    assert all(re.search(n, message) for n in needles), message
    assert "q.toml" in message and "steps[0] (kind = 'quantize')" in message
