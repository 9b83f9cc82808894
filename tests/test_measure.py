"""FLOPs and params follow Model Optimizer's conventions and equal its own counts; human units."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from optcheck.core.compat import import_modelopt
from optcheck.build.measure import count_flops, count_params
from optcheck.core.limits import human
from optcheck.build.models import SmallCNN, build_model, resnet20
from optcheck.recipes.schema import ModelConfig


def modelopt_flops(model, x) -> float:
    import_modelopt()
    from modelopt.torch.nas.utils import inference_flops

    return inference_flops(model, dummy_input=x, unit=1.0)


def modelopt_params(model, x) -> float:
    import_modelopt()
    from modelopt.torch.utils.network import param_num_from_forward

    return param_num_from_forward(model, args=x, unit=1.0)


def torchvision_model(name):
    import torchvision.models as tvm

    return tvm.get_model(name, weights=None, num_classes=10)


MODELS = pytest.mark.parametrize("make, size", [
    (resnet20, 32),
    (SmallCNN, 16),
    (lambda: torchvision_model("resnet18"), 64),
    (lambda: torchvision_model("mobilenet_v3_small"), 64),
], ids=["resnet20", "small_cnn", "tv-resnet18", "tv-mobilenet_v3_small"])


@MODELS
def test_flops_equal_modelopt_inference_flops(make, size):
    model = make()
    x = torch.randn(1, 3, size, size)
    assert count_flops(model, x) == modelopt_flops(model, x)


@MODELS
def test_params_equal_modelopt_param_num_from_forward(make, size):
    model = make()
    x = torch.randn(1, 3, size, size)
    assert count_params(model) == count_params(model, x) == modelopt_params(model, x)


def test_flops_equal_modelopt_on_a_pruned_subnet(tiny_run):
    pruned = tiny_run.artifact("pruned").model
    x = tiny_run.ctx.dummy_input()
    assert count_flops(pruned, x) == modelopt_flops(pruned, x) < tiny_run.artifact("baseline").metrics.flops


def test_params_equal_modelopt_on_a_pruned_subnet(tiny_run):
    pruned = tiny_run.artifact("pruned").model
    x = tiny_run.ctx.dummy_input()
    assert count_params(pruned) == modelopt_params(pruned, x) < tiny_run.artifact("baseline").metrics.params


def test_params_equal_modelopt_on_a_sampled_fastnas_subnet_and_its_export():
    mtn, _, _ = import_modelopt()
    model = mtn.convert(resnet20(), mode="fastnas")
    x = torch.randn(1, 3, 32, 32)
    assert count_params(model) == modelopt_params(model, x) == 268_346  # the full subnet
    mtn.sample(model, min)
    sampled = count_params(model)
    assert sampled == count_params(model, x) == modelopt_params(model, x) < 268_346  # active slices only
    exported = mtn.export(model)
    assert count_params(exported) == modelopt_params(exported, x) == sampled


class TiedWithUnusedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 4))
        self.body[4].weight = self.body[3].weight  # one tensor, two modules: counted for each, as modelopt does
        self.head = nn.Linear(4, 100)  # never called by the forward

    def forward(self, x):
        return self.body(x)


def test_params_by_hand_batchnorm_excluded_shared_per_module_unused_only_without_input():
    model = TiedWithUnusedHead()
    x = torch.randn(2, 4)
    assert count_params(model, x) == 20 + 20 + (16 + 4)  # BatchNorm's 8 are not counted
    assert model.training and model.body[1].num_batches_tracked == 0  # mode kept, BN statistics untouched
    assert count_params(model) == 60 + 500  # without an input every module counts
    assert modelopt_params(model, x) == 60


def test_flops_by_hand_two_times_macs_batchnorm_excluded():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    conv_macs = 8 * 4 * 4 * (3 * 3 * 3)  # outputs x (in_ch x k x k)
    linear_macs = 8 * 4 * 4 * 5
    assert count_flops(model, torch.randn(1, 3, 4, 4)) == 2 * (conv_macs + linear_macs)


def test_flops_restore_training_mode():
    model = SmallCNN().train()
    count_flops(model, torch.randn(1, 3, 16, 16))
    assert model.training


def test_resnet20_matches_the_paper():
    model = resnet20()
    assert count_params(model) == 268_346  # modelopt's convention: BatchNorm excluded
    built = build_model(ModelConfig(name="resnet20"), num_classes=10, in_channels=3)
    assert count_params(built) == modelopt_params(built, torch.zeros(1, 3, 32, 32)) == 268_346
    assert sum(p.numel() for p in model.parameters()) == 269_722  # every tensor: He et al. report 0.27M
    assert count_flops(model, torch.zeros(1, 3, 32, 32)) == 81_102_208  # 40.55M MACs
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and {c.out_channels for c in convs} == {16, 32, 64}


@pytest.mark.parametrize("n, text", [(81_102_208, "81.1M"), (999, "999"), (1_500, "1.5k"), (None, "-"),
                                     (2.5e9, "2.5G")])
def test_human(n, text):
    assert human(n) == text
