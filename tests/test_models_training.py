"""Models by name, the learning-rate schedule, and seeded, improving training."""

from __future__ import annotations

import math

import pytest
import torch

from optcheck.build.data import build_data, make_loader
from optcheck.core.errors import RecipeError
from optcheck.build.models import build_model
from optcheck.recipes.schema import DataConfig, ModelConfig
from optcheck.build.training import Schedule, evaluate, scaled_lr, train, warmup_cosine


def test_torchvision_model_random_init_without_download(monkeypatch):
    import torch.hub

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda *a, **k: pytest.fail("tried to download weights"))
    model = build_model(ModelConfig(name="torchvision:resnet18"), num_classes=7)
    assert model.fc.out_features == 7


def test_unknown_torchvision_model_suggests_names():
    with pytest.raises(RecipeError) as info:
        build_model(ModelConfig(name="torchvision:resnet19"), 10, path="recipes/x.toml")
    assert "field 'model.name'" in str(info.value) and "resnet18" in str(info.value)


def tiny_factory(num_classes, width=4):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))


def test_user_model_factory(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "my_models", sys.modules[__name__])
    model = build_model(ModelConfig(name="my_models:tiny_factory", options={"width": 2}), num_classes=5)
    assert model(torch.zeros(2, 3, 4, 4)).shape == (2, 5)


def test_same_seed_same_initial_weights():
    a, b = (build_model(ModelConfig(name="resnet20"), 10, seed=3) for _ in range(2))
    c = build_model(ModelConfig(name="resnet20"), 10, seed=4)
    assert torch.equal(a.conv1.weight, b.conv1.weight) and not torch.equal(a.conv1.weight, c.conv1.weight)


def test_warmup_then_cosine():
    f = warmup_cosine(total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


def test_lr_scales_linearly_with_batch_size():
    assert scaled_lr(0.1, 128) == pytest.approx(0.1) and scaled_lr(0.1, 32) == pytest.approx(0.025)
    assert math.isclose(scaled_lr(0.05, 256), 0.1)


def test_training_learns_and_is_reproducible():
    data = build_data(DataConfig(dataset="synthetic"), seed=0)

    def run():
        torch.manual_seed(0)
        model = build_model(ModelConfig(name="small_cnn"), data.num_classes, seed=0)
        val = make_loader(data.val, 64, shuffle=False, seed=0)
        before = evaluate(model, val)[0]
        history = train(model, make_loader(data.train, 32, shuffle=True, seed=0), val,
                        Schedule(epochs=6, lr=0.05, warmup_epochs=0.5))
        return model, before, history

    model_a, before, history = run()
    model_b, _, _ = run()
    assert history[-1]["val_acc"] > before + 0.2
    assert all(torch.equal(p, q) for p, q in zip(model_a.state_dict().values(), model_b.state_dict().values()))
    assert history[-1]["lr"] < history[0]["lr"]
