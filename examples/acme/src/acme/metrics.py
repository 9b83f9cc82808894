"""The team's quality metrics (none of them is top-1 accuracy).

optcheck calls each as ``metric(model, loader, device)`` with the model in eval mode under
``torch.no_grad()``, on the split the recipe names; a metric returns one number, or one value per
sample (1-D, as many as the split has samples), which gives the budget a paired interval.
"""

from __future__ import annotations

import torch


def _outputs(model, loader, device):
    logits, labels = [], []
    for x, y in loader:
        logits.append(model(x.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def macro_f1(model, loader, device) -> float:
    """The mean over classes of F1 (higher is better): one number for the split."""
    from sklearn.metrics import f1_score

    logits, labels = _outputs(model, loader, device)
    return float(f1_score(labels.numpy(), logits.argmax(1).numpy(), average="macro"))


def expected_calibration_error(model, loader, device, bins: int = 10) -> float:
    """|confidence - accuracy| averaged over 10 confidence bins, weighted by their size (lower is
    better): one number for the split."""
    logits, labels = _outputs(model, loader, device)
    confidence, predicted = logits.softmax(1).max(1)
    right = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += inside.float().mean() * (confidence[inside].mean() - right[inside].mean()).abs()
    return float(ece)


def brier(model, loader, device) -> torch.Tensor:
    """The Brier score of each sample: squared error of the predicted distribution against the one-hot
    label (lower is better): one value per sample, so its budget gets a paired interval."""
    logits, labels = _outputs(model, loader, device)
    probs = logits.softmax(1)
    return ((probs - torch.nn.functional.one_hot(labels, probs.shape[1]).float()) ** 2).sum(1)
