"""FLOPs follow Model Optimizer's convention and equal its own count; params; human units."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from optcheck.compat import import_modelopt
from optcheck.measure import count_flops, count_params, human
from optcheck.models import SmallCNN, resnet20


def modelopt_flops(model, x) -> float:
    import_modelopt()
    from modelopt.torch.nas.utils import inference_flops

    return inference_flops(model, dummy_input=x, unit=1.0)


def torchvision_model(name):
    import torchvision.models as tvm

    return tvm.get_model(name, weights=None, num_classes=10)


@pytest.mark.parametrize("make, size", [
    (resnet20, 32),
    (SmallCNN, 16),
    (lambda: torchvision_model("resnet18"), 64),
    (lambda: torchvision_model("mobilenet_v3_small"), 64),
], ids=["resnet20", "small_cnn", "tv-resnet18", "tv-mobilenet_v3_small"])
def test_flops_equal_modelopt_inference_flops(make, size):
    model = make()
    x = torch.randn(1, 3, size, size)
    assert count_flops(model, x) == modelopt_flops(model, x)


def test_flops_equal_modelopt_on_a_pruned_subnet(tiny_run):
    pruned = tiny_run.artifact("pruned").model
    x = tiny_run.ctx.dummy_input()
    assert count_flops(pruned, x) == modelopt_flops(pruned, x) < tiny_run.artifact("baseline").metrics.flops


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
    assert count_params(model) == 269_722  # He et al. report 0.27M
    assert count_flops(model, torch.zeros(1, 3, 32, 32)) == 81_102_208  # 40.55M MACs
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and {c.out_channels for c in convs} == {16, 32, 64}


@pytest.mark.parametrize("n, text", [(81_102_208, "81.1M"), (999, "999"), (1_500, "1.5k"), (None, "-"),
                                     (2.5e9, "2.5G")])
def test_human(n, text):
    assert human(n) == text
