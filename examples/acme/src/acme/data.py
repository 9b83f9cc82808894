"""The team's data: scikit-learn's digits (1,797 8x8 grey images) upsampled to 16x16, split 70/10/20
by class, normalised with the train split's statistics. Deterministic for a seed."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset


def splits(seed: int = 0, image_size: int = 16) -> dict:
    """optcheck calls this as ``splits(seed=..., **data.options)``: the three splits, and the classes."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    y = torch.tensor(digits.target, dtype=torch.long)
    index = np.arange(len(y))
    rest, test = train_test_split(index, test_size=0.2, random_state=seed, stratify=digits.target)
    train, val = train_test_split(rest, test_size=0.125, random_state=seed + 1, stratify=digits.target[rest])
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return {"train": TensorDataset(x[train], y[train]), "val": TensorDataset(x[val], y[val]),
            "test": TensorDataset(x[test], y[test]), "num_classes": 10}
