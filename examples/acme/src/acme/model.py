"""The team's model: a small CNN for 16x16 grey digits (a 3x3 stem, two strided stages, a linear head)."""

from __future__ import annotations

import torch.nn as nn


def block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class DigitNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(block(1, width, 1), block(width, width, 1), block(width, 2 * width, 2),
                                      block(2 * width, 2 * width, 1), block(2 * width, 4 * width, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


def make_net(num_classes: int = 10, width: int = 32) -> DigitNet:
    """What optcheck builds (untrained) before it loads the checkpoint into it."""
    return DigitNet(num_classes, width)
