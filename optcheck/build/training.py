"""Seeding, the training loop (SGD + momentum, cosine schedule with linear warm-up) and evaluation."""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

Log = Callable[[str], None]


def _silent(_: str) -> None:
    pass


def check_batch(logits: torch.Tensor, y: torch.Tensor) -> None:
    """Labels the model cannot predict make any accuracy meaningless: an error, not a number."""
    from optcheck.core.errors import EvaluationError

    classes = logits.shape[1] if logits.dim() == 2 else None
    if classes is not None and y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
        bad = sorted({int(v) for v in y[(y < 0) | (y >= classes)].tolist()})[:5]
        raise EvaluationError(f"labels {bad} lie outside the model's {classes} classes (0..{classes - 1}): "
                              "the dataset's labels and the model's output size disagree; make the labels "
                              "0..num_classes-1, or give the dataset factory's num_classes the true count")


def _nonempty(total: int) -> None:
    from optcheck.core.errors import EvaluationError

    if total == 0:
        raise EvaluationError("evaluation on an empty split (0 samples): an accuracy of nothing is not a "
                              "number; give the split samples")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--optcheck-device=cuda but torch.cuda.is_available() is False; "
                           "use --optcheck-device=cpu or auto")
    return torch.device(name)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu") -> tuple[float, int]:
    """Top-1 accuracy and the number of samples it was measured on (eval mode; mode restored)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        check_batch(logits, y)
        correct += (logits.argmax(dim=1) == y).sum().item()
        total += y.numel()
    model.train(was_training)
    _nonempty(total)
    return correct / total, total


@torch.no_grad()
def correct_mask(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu") -> torch.Tensor:
    """Per sample, in loader order: did the model's top-1 prediction hit the label (eval mode)."""
    was_training = model.training
    model.eval()
    hits = []
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        check_batch(logits, y)
        hits.append((logits.argmax(dim=1) == y).cpu())
    model.train(was_training)
    _nonempty(sum(len(h) for h in hits))
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


@torch.no_grad()
def mean_log_prob(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu") -> float:
    """Mean log-probability of the true class (eval mode; mode restored): a score with no ties.

    Accuracy on a few hundred images moves in steps of 1/n, so two candidates tie often and a
    last-bit difference decides between them; this score is continuous.
    """
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        check_batch(logits, y)
        logp = torch.log_softmax(logits.double(), dim=1)
        total += logp.gather(1, y.view(-1, 1)).sum().item()
        n += y.numel()
    model.train(was_training)
    _nonempty(n)
    return total / n


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu") -> int:
    """Re-estimate every BatchNorm's running statistics from one pass over ``loader``.

    Statistics are reset and averaged cumulatively (momentum None) over the whole pass, then each
    layer's momentum is put back. Returns the number of BatchNorm layers. The weights do not change.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x, _y in loader:
        if x.shape[0] > 1:  # a batch of one has no batch statistics
            model(x.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return len(norms)


@dataclass(frozen=True)
class Schedule:
    epochs: int
    lr: float  # already scaled by batch size
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule: ``base_lr`` is the rate at batch size 128."""
    return base_lr * batch_size / 128


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup_steps, span) / span))

    return factor


def train(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader, schedule: Schedule, *,
          device: torch.device | str = "cpu", log: Log = _silent, label: str = "train",
          criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> list[dict]:
    """Train in place; the weights of the epoch with the best val accuracy are kept.

    ``criterion(logits, labels)`` is the loss (default: cross-entropy; a distillation loss adds the
    teacher's term).

    Returns one record per epoch: loss, val accuracy, learning rate.
    """
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=schedule.lr, momentum=schedule.momentum,
                                weight_decay=schedule.weight_decay)
    steps = schedule.epochs * len(train_loader)
    warmup = int(schedule.warmup_epochs * len(train_loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, warmup))
    loss_fn = criterion or nn.CrossEntropyLoss()
    best_acc, best_state, history = -1.0, None, []
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    from optcheck.core.progress import Clock, eta

    clock = Clock()
    for epoch in range(1, schedule.epochs + 1):
        model.train()
        running, seen = 0.0, 0
        for x, y in train_loader:
            if has_bn and x.shape[0] == 1:
                continue  # a lone last sample: BatchNorm cannot train on a batch of one (torch raises)
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            check_batch(logits, y)
            loss = loss_fn(logits, y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item() * y.numel()
            seen += y.numel()
        acc, n = evaluate(model, val_loader, device)
        history.append({"epoch": epoch, "loss": running / max(seen, 1), "val_acc": acc,
                        "lr": optimizer.param_groups[0]["lr"]})
        if acc > best_acc:
            best_acc, best_state = acc, copy.deepcopy(model.state_dict())
        took = eta(epoch, schedule.epochs, clock.elapsed())
        log(f"{label}: epoch {epoch}/{schedule.epochs}  loss {running / max(seen, 1):.4f}  "
            f"val acc {acc:.4f} (n={n})  {clock.elapsed() / epoch:.1f} s/epoch" + (f", {took}" if took else ""))
    if best_state is not None:
        model.load_state_dict(best_state)
    return history
