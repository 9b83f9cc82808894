"""A team's code as the tests of issue 22 use it: model and data factories, metrics (good and broken),
training loops (good, and one that silently does nothing), compression functions (good, and one that
returns the model unchanged), a FastNAS score and a calibration loop. Imported by optcheck from the
recipes the tests write, as ``team_code:<name>``."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

CALLS: dict[str, int] = {}


def _count(name: str) -> None:
    CALLS[name] = CALLS.get(name, 0) + 1


class Net(nn.Module):
    """The team's classifier: three conv blocks and a linear head."""

    def __init__(self, num_classes: int = 4, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def net(num_classes: int = 4, width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return Net(num_classes, width)


def trained_net(num_classes: int = 4, weights: str = "") -> nn.Module:
    """A factory that returns a trained model (``model.pretrained = true``), its weights read from a file
    its source does not name (as a team's model registry would hand them out)."""
    from safetensors.torch import load_file

    model = Net(num_classes)
    model.load_state_dict(load_file(weights))
    return model


def wide_net(num_classes: int = 4) -> nn.Module:
    return net(num_classes, width=24)


def data(seed: int = 0, samples: int = 320) -> dict:
    """Four classes of noisy prototype images (3x16x16), 60/15/25 split."""
    g = torch.Generator().manual_seed(1234)
    prototypes = torch.randn(4, 3, 16, 16, generator=g)
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(samples) % 4
    x = prototypes[y] + 1.6 * torch.randn(samples, 3, 16, 16, generator=g)
    order = torch.randperm(samples, generator=g)
    x, y = x[order], y[order]
    a, b = int(0.6 * samples), int(0.75 * samples)
    return {"train": TensorDataset(x[:a], y[:a]), "val": TensorDataset(x[a:b], y[a:b]),
            "test": TensorDataset(x[b:], y[b:]), "num_classes": 4}


# -- metrics ---------------------------------------------------------------------------------------------

def _logits(model, loader, device):
    out, labels = [], []
    for x, y in loader:
        out.append(model(x.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(out), torch.cat(labels)


def brier(model, loader, device) -> torch.Tensor:
    """Per-sample Brier score (lower is better)."""
    logits, labels = _logits(model, loader, device)
    p = logits.softmax(1)
    return ((p - F.one_hot(labels, p.shape[1]).float()) ** 2).sum(1)


def correct(model, loader, device) -> torch.Tensor:
    """Per-sample correctness flags (higher is better): 0/1 values."""
    logits, labels = _logits(model, loader, device)
    return (logits.argmax(1) == labels).float()


def macro_f1(model, loader, device) -> float:
    logits, labels = _logits(model, loader, device)
    pred, f1s = logits.argmax(1), []
    for c in range(logits.shape[1]):
        tp = int(((pred == c) & (labels == c)).sum())
        fp, fn = int(((pred == c) & (labels != c)).sum()), int(((pred != c) & (labels == c)).sum())
        f1s.append(2 * tp / max(1, 2 * tp + fp + fn))
    return sum(f1s) / len(f1s)


def nan_metric(model, loader, device) -> float:
    return float("nan")


def short_metric(model, loader, device):
    return torch.zeros(3)


def text_metric(model, loader, device):
    return "good"


def raising_metric(model, loader, device):
    raise KeyError("label_map")


# -- training loops --------------------------------------------------------------------------------------

def fit(model, training) -> dict:
    """AdamW, the loss optcheck hands over (cross-entropy, or the KD loss when distilling)."""
    _count("fit")
    opt = torch.optim.AdamW(model.parameters(), lr=float(training.options.get("lr", 3e-3)))
    for _ in range(training.epochs):
        model.train()
        for x, y in training.train_loader():
            loss = training.criterion(model(x.to(training.device)), y.to(training.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {"epochs": training.epochs, "distilling": training.distilling}


def fit_own_loss(model, training) -> None:
    """Its own loss (label smoothing); the KD total from Model Optimizer when distilling."""
    _count("fit_own_loss")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(training.epochs):
        model.train()
        for x, y in training.train_loader():
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            if training.distilling:
                loss = model.compute_kd_loss(student_loss=loss)
            opt.zero_grad()
            loss.backward()
            opt.step()


def fit_nothing(model, training) -> None:
    """A regression: the loop runs but trains nothing (the optimizer step was lost in a refactor)."""
    _count("fit_nothing")
    for x, _y in training.train_loader():
        model(x)


def fit_returns_loss(model, training):
    return 0.5


# -- compression -----------------------------------------------------------------------------------------

def quantize_int8(model, run):
    """The team's own mtq.quantize with its own config dict: INT8 weights only, no input quantizer."""
    import copy

    import modelopt.torch.quantization as mtq

    config = copy.deepcopy(mtq.INT8_DEFAULT_CFG)  # Model Optimizer 0.47: quant_cfg is a list of rules, in order
    config["quant_cfg"] = [r for r in config["quant_cfg"] if r.get("quantizer_name") != "*input_quantizer"]
    config["quant_cfg"].append({"quantizer_name": "*input_quantizer", "enable": False})
    batches = [x for (x, _y), _ in zip(run.ctx.train_loader(), range(4))]

    def forward_loop(m):
        with torch.no_grad():
            for x in batches:
                m(x)

    return mtq.quantize(model.eval(), config, forward_loop)


def unchanged(model, run):
    """A regression: the compression function forgot to compress."""
    return model


def halve_channels(model, run):
    """Changes layer shapes outside Model Optimizer (the checkpoint must be torch_pruning)."""
    import torch_pruning as tp

    example = torch.zeros(1, 3, 16, 16)
    pruner = tp.pruner.MagnitudePruner(model.eval(), example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                       pruning_ratio=0.5, ignored_layers=[model.head])
    pruner.step()
    return model


def returns_none(model, run):
    return None


def score(model) -> float:
    """Model Optimizer's score_func(model): how many of the first val-like inputs keep their class."""
    _count("score")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return float(model(torch.randn(8, 3, 16, 16, generator=g)).softmax(1).max(1).values.mean())


def score_on_val(model, loader, device) -> float:
    _count("score_on_val")
    right = total = 0
    with torch.no_grad():
        for x, y in loader:
            right += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
            total += len(y)
    return right / total


def calibrate(model, batches) -> None:
    _count("calibrate")
    with torch.no_grad():
        for x in batches:
            model(x)


def damage(model, run):
    """Noise on every weight (``options.std``): a compression that costs quality, as a planted regression."""
    g = torch.Generator().manual_seed(0)
    std = float(run.step.options.get("std", 0.3))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * p.abs().mean() * torch.randn(p.shape, generator=g))
    return model


def plateau_score(model) -> float:
    """A flat score: 1.0 unless a conv layer is below half its width, then 0.1. The most sensitive
    choices are the smallest ones, so Model Optimizer's binary search (thresholds strictly below the
    largest sensitivity) never tries them and cannot reach a tight FLOPs target."""
    full = iter((16, 32, 32))
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    return 0.1 if any(w < next(full) // 2 for w in widths) else 1.0


def not_a_number_score(model) -> str:
    return "high"
