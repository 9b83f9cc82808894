"""Models by name: ``resnet20``, ``small_cnn``, ``torchvision:NAME``, ``package.module:function``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import difflib
import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F

from optcheck.core.errors import Problem, RecipeError

if TYPE_CHECKING:  # annotations only: the build layer sits below the recipes
    from optcheck.recipes.schema import ModelConfig


class PadShortcut(nn.Module):
    """Option A shortcut: subsample by 2 and zero-pad ``pad`` channels on each side; no parameters.
    A module, not a lambda: Torch-Pruning's ``tp.state_dict`` pickles the modules' attributes."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(planes // 4)  # option A: zero-pad the channels, no parameters

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016): 16/32/64 channels, zero-padding shortcuts."""

    def __init__(self, num_blocks=(3, 3, 3), num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, num_blocks[0], 1)
        self.layer2 = self._stage(32, num_blocks[1], 2)
        self.layer3 = self._stage(64, num_blocks[2], 2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet((3, 3, 3), num_classes, in_channels)


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU layers and a linear head: fast enough for unit tests."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(),
        )
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def _torchvision(name: str, num_classes: int, options: dict, path: str) -> nn.Module:
    import torchvision.models as tvm

    known = tvm.list_models(module=tvm)
    if name not in known:
        near = difflib.get_close_matches(name, known, n=3)
        raise RecipeError(path, [Problem("model.name", f"torchvision has no classification model {name!r}",
                                         "any name from torchvision.models.list_models(module=torchvision.models)",
                                         f"did you mean {', '.join(near)}?" if near else "pick a listed name")])
    if "num_classes" in options:
        raise RecipeError(path, [Problem("model.options.num_classes", "optcheck sets num_classes itself (the data's "
                                         "class count)", fix="remove num_classes from model.options")])
    options = dict(options)
    weights = None
    if options.get("weights") is not None:  # trained weights, from the local hub cache only
        from optcheck.build.weights import torchvision_weights

        weights = torchvision_weights(name, str(options.pop("weights")), path)
        classes = len(weights.meta.get("categories") or []) or num_classes
        if classes != num_classes:
            raise RecipeError(path, [Problem("model.options.weights", f"torchvision's {name} {weights.name} weights "
                                             f"classify {classes} classes; the data has {num_classes}",
                                             fix="use data with the weights' classes, or a checkpoint of your own "
                                                 "fine-tuned model (model.checkpoint)")])
    options.pop("weights", None)
    try:
        return tvm.get_model(name, weights=weights, num_classes=num_classes, **options)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise RecipeError(path, [Problem("model.options", f"torchvision's {name} rejects an option: {exc}",
                                         fix="remove it from model.options (see torchvision's docs for the "
                                             "model's arguments)")]) from None


def check_options(fn, options: dict, reserved: tuple[str, ...], path: str, what: str) -> None:
    """``model.options`` must be keyword arguments ``fn`` takes (and not the ones optcheck passes)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    taken = [k for k in options if k in reserved]
    if taken:
        raise RecipeError(path, [Problem(f"model.options.{taken[0]}", f"optcheck sets {taken[0]} itself (from the data)",
                                         fix=f"remove {taken[0]} from model.options")])
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in reserved]
    for key in options:
        if key not in allowed:
            near = difflib.get_close_matches(key, allowed, n=1)
            raise RecipeError(path, [Problem(
                f"model.options.{key}", f"{what} takes no argument {key!r}", ", ".join(allowed) or "no options",
                f"did you mean {near[0]!r}?" if near else "remove it from model.options")])


def build_model(cfg: ModelConfig, num_classes: int, in_channels: int = 3, *, seed: int = 0,
                path: str = "<recipe>") -> nn.Module:
    """Build a freshly initialised model; the same ``seed`` gives the same weights."""
    torch.manual_seed(seed)
    if cfg.name == "resnet20":
        check_options(resnet20, cfg.options, ("num_classes", "in_channels"), path, "resnet20")
        return resnet20(num_classes, in_channels, **cfg.options)
    if cfg.name == "small_cnn":
        check_options(SmallCNN.__init__, cfg.options, ("self", "num_classes", "in_channels"), path, "small_cnn")
        return SmallCNN(num_classes, in_channels, **cfg.options)
    if cfg.name.startswith("torchvision:"):
        return _torchvision(cfg.name.split(":", 1)[1], num_classes, cfg.options, path)
    from optcheck.core.factories import load_factory

    factory = load_factory(cfg.name, "model.name", path)
    check_options(factory, cfg.options, (), path, cfg.name)
    kwargs = dict(cfg.options)
    params = inspect.signature(factory).parameters
    if "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs.setdefault("num_classes", num_classes)
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise RecipeError(path, [Problem("model.name", f"{cfg.name} returned {type(model).__name__}, not a torch.nn.Module",
                                         fix="make the factory return the model instance")])
    return model
