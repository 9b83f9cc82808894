"""User code gone wrong, for the hostile-input catalogue (tests/test_hostile.py): each factory is a
mistake a real project makes. The catalogue copies this file into its project as ``hostile_factories``."""

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset


def _images(n, classes=4, shape=(3, 8, 8), seed=0, label_shift=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    protos = torch.rand(classes, *shape, generator=g)
    x = (protos[y] + 0.1 * torch.randn(n, *shape, generator=g)).clamp(0, 1)
    return TensorDataset(x, y + label_shift)


def good_data(seed=0):
    return {"train": _images(160, seed=seed), "val": _images(40, seed=seed + 1), "test": _images(48, seed=seed + 2)}


def raising_data(seed=0):
    raise FileNotFoundError("annotations.csv not found next to the images")


def data_without_seed():
    return good_data()


def data_as_a_string(seed=0):
    return "train.csv"


def empty_val(seed=0):
    return {"train": _images(160), "val": _images(0), "test": _images(48)}


def tiny_test(seed=0):
    return {"train": _images(160), "val": _images(40), "test": _images(10)}


def flat_vectors(seed=0):
    g = torch.Generator().manual_seed(seed)

    def flat(n):
        return TensorDataset(torch.rand(n, 64, generator=g), torch.arange(n) % 4)

    return {"train": flat(160), "val": flat(40), "test": flat(48)}


def labels_beyond_the_classes(seed=0):
    # 4 classes in train, but the test split's labels are shifted to 4..7: never predictable
    return {"train": _images(160), "val": _images(40), "test": _images(48, label_shift=4), "num_classes": 4}


def negative_labels(seed=0):
    return {"train": _images(160, label_shift=-1), "val": _images(40), "test": _images(48), "num_classes": 4}


class TupleNet(nn.Module):
    """A forward that returns (logits, features), as detection-style code often does."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        f = self.conv(x).mean(dim=(2, 3))
        return self.head(f), f


def tuple_model(num_classes=4):
    return TupleNet(num_classes)


def raising_model(num_classes=4):
    raise ValueError("depth must be one of 18, 34, 50")


def not_a_model(num_classes=4):
    return {"conv": nn.Conv2d(3, 8, 3)}


def fixed_head_model(num_classes=4):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 7))  # ignores num_classes


class BreaksInTraining(nn.Module):
    """Evaluates fine (the checks before training pass), then fails on the first training step."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            raise RuntimeError("CUDA-only custom kernel called on a CPU tensor")
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def breaks_in_training(num_classes=4):
    return BreaksInTraining(num_classes)


def plain_cnn(num_classes=4):
    """A user's own model factory, as ``model.name = "hostile_factories:plain_cnn"`` names it."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))
