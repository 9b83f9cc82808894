"""The team's training loop: AdamW, label smoothing, a one-cycle schedule (not optcheck's SGD).

optcheck calls it as ``fit(model, training)`` to fine-tune a stage (``function = "acme.train:fit"`` in a
``finetune`` step), and ``scripts/train_checkpoint.py`` calls it to train the checkpoint. ``training``
is ``optcheck.steps.api.Training``: epochs, a seeded train loader per call, the val loader, the device,
the step's ``options`` and ``criterion``, which is the loss optcheck wants trained (cross-entropy, or the
knowledge-distillation loss when the step distills).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit(model, training) -> dict:
    options = training.options
    lr = float(options.get("lr", 2e-3))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=float(options.get("weight_decay", 1e-4)))
    steps = max(1, training.epochs * len(training.train_loader()))
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    smoothing = float(options.get("label_smoothing", 0.05))
    history = {"val_acc": []}
    for epoch in range(training.epochs):
        model.train()
        for x, y in training.train_loader():
            x, y = x.to(training.device), y.to(training.device)
            logits = model(x)
            if training.distilling:  # optcheck's KD loss (Model Optimizer's compute_kd_loss inside)
                loss = training.criterion(logits, y)
            else:
                loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
        history["val_acc"].append(accuracy(model, training.val_loader, training.device))
        training.log(f"acme fit: epoch {epoch + 1}/{training.epochs} val acc {history['val_acc'][-1]:.2%}")
    return history


@torch.no_grad()
def accuracy(model, loader, device) -> float:
    was = model.training
    model.eval()
    right = total = 0
    for x, y in loader:
        right += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
        total += len(y)
    model.train(was)
    return right / max(1, total)
