"""ONNX deployment parity (``onnx_max_abs_diff``, ``onnx_top1_agreement``, ``assert_onnx_parity``):
the clean export passes, a graph that lost a layer fails with numbers, an export that fails is a
failure (never a silent pass), a Model Optimizer INT8 stage exports with Q/DQ nodes."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from optcheck import assert_onnx_parity
from test_steps import QUANTIZE, build_all, judge, make_run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ONNX = "onnx_max_abs_diff = 1e-4\nonnx_top1_agreement = 1.0\n"


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("onnx"), QUANTIZE, "onnx_max_abs_diff = 0.5\nonnx_top1_agreement = 0.9\n")
    build_all(run)
    return run


def data(run):
    return run.ctx.test_loader


def test_the_exported_baseline_agrees_with_pytorch(int8_run):
    got = assert_onnx_parity(int8_run.artifact("baseline").model, data(int8_run), max_abs_diff=1e-4,
                             top1_agreement=1.0)
    assert got["max_abs_diff"] < 1e-4 and got["top1_agreement"] == 1.0
    assert got["n"] == int8_run.artifact("baseline").metrics.test_n and got["qdq_nodes"] == 0


def test_the_int8_stage_exports_with_qdq_nodes_and_its_budgets_pass(int8_run):
    verdicts = judge(int8_run)
    assert set(verdicts.values()) == {"passed"}, verdicts
    from optcheck.budgets.judges import check_budget

    got = check_budget("onnx_max_abs_diff", int8_run)
    assert got["qdq_nodes"] > 0  # Model Optimizer's fake quantizers became QuantizeLinear / DequantizeLinear
    assert "top-1 agreement" in got["explain"] and "Q/DQ" in got["explain"]
    assert (int8_run.ctx.workdir / "quantized.onnx").stat().st_size == got["onnx_bytes"]


class DropsALayerWhenTraced(nn.Module):
    """A forward that branches on a Python flag the exporter freezes: the layer is absent from the
    graph (the planted regression)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.scale = nn.Linear(model(torch.zeros(1, 3, 16, 16)).shape[1], model(torch.zeros(1, 3, 16, 16)).shape[1])
        nn.init.eye_(self.scale.weight)
        with torch.no_grad():
            self.scale.weight.mul_(-1.0)  # reverses the ranking: every prediction changes

    def forward(self, x):
        y = self.model(x)
        if not torch.jit.is_tracing():
            y = self.scale(y)
        return y


def test_a_graph_that_lost_a_layer_fails_both_budgets_with_numbers(int8_run):
    model = DropsALayerWhenTraced(int8_run.artifact("baseline").model).eval()
    with pytest.raises(AssertionError) as err:
        assert_onnx_parity(model, data(int8_run), max_abs_diff=1e-4)
    msg = str(err.value)
    assert "optcheck budget 'onnx_max_abs_diff' failed" in msg
    assert "max |diff| <= 0.0001" in msg and "frozen at the traced batch" in msg
    with pytest.raises(AssertionError) as err:
        assert_onnx_parity(model, data(int8_run), top1_agreement=0.99)
    msg = str(err.value)
    assert "optcheck budget 'onnx_top1_agreement' failed" in msg
    n = int8_run.artifact("baseline").metrics.test_n
    assert f"of {n} differ" in msg and "top-1 agreement >= 99.00%" in msg


class NotExportable(nn.Module):
    """Uses an op the TorchScript exporter cannot write at opset 17 (aten::kthvalue)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        y = self.model(x)
        return y - torch.kthvalue(y, 1, dim=1, keepdim=True).values


def test_an_export_that_fails_is_a_failure_not_a_pass(int8_run):
    model = NotExportable(int8_run.artifact("baseline").model).eval()
    with pytest.raises(AssertionError) as err:
        assert_onnx_parity(model, data(int8_run), top1_agreement=0.5)
    msg = str(err.value)
    assert "optcheck budget 'onnx_top1_agreement' failed" in msg and "export" in msg
    assert "torch.onnx.export (TorchScript exporter, opset 17) raised UnsupportedOperatorError" in msg
    assert "aten::kthvalue" in msg


@pytest.mark.parametrize(("kwargs", "error"), [
    ({}, "give max_abs_diff, top1_agreement or both"),
    ({"max_abs_diff": float("inf")}, "inf can never fail"),
    ({"max_abs_diff": -1.0}, "a finite number >= 0"),
    ({"top1_agreement": 0.0}, "0 can never fail"),
    ({"top1_agreement": 1.5}, "a fraction in (0, 1]"),
])
def test_limits_that_cannot_fail_are_refused(kwargs, error):
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        assert_onnx_parity(nn.Linear(2, 2), (torch.zeros(4, 2), torch.zeros(4)), **kwargs)


@pytest.mark.parametrize(("line", "error"), [
    ("onnx_max_abs_diff = inf", "onnx_max_abs_diff"),
    ("onnx_max_abs_diff = -0.1", "onnx_max_abs_diff"),
    ("onnx_top1_agreement = 0.0", "onnx_top1_agreement"),
    ("onnx_top1_agreement = 1.01", "onnx_top1_agreement"),
    ('onnx_top1_agreement = "99%"', "onnx_top1_agreement"),
])
def test_the_recipe_refuses_onnx_budgets_that_cannot_fail(tmp_path, line, error):
    from conftest import TINY_HEAD

    from optcheck.core.errors import RecipeError
    from optcheck.recipes.loader import load_recipe

    path = tmp_path / "r.toml"
    path.write_text(TINY_HEAD + QUANTIZE + "\n[budgets]\n" + line + "\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert error in str(err.value)
