"""Silence the libraries' internal noise inside optcheck's own calls, and only there.

Model Optimizer and torch warn about their own internals while optcheck drives them: deprecations
inside modelopt's code (pydantic's ``model_fields`` on an instance, ``torch.jit.script``), the
FastNAS searcher's notices about the checkpoint optcheck gives it and its calibration queue. None of
them is about the user's model, and a user cannot act on them; without this their warnings summary
is full of them. What concerns the user's model (e.g. a module that cannot be traced) is not in the
list and still reaches them.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

# (message regex, category): each one seen in a user's run of optcheck, raised inside modelopt/torch
LIBRARY_NOISE: tuple[tuple[str, type[Warning]], ...] = (
    (r"`torch\.jit\.script` is deprecated", FutureWarning),
    (r"Accessing the 'model_fields' attribute on the instance is deprecated", Warning),
    (r"modelopt data queue not filled", UserWarning),
    (r"Per-rank checkpoint .* not found", UserWarning),
    (r"Checkpoint .* does not exist! Initializing from scratch", UserWarning),
    # distillation (steps/finetune.py): optcheck passes student_loss, as the warning asks; the KD loss's
    # kl_div(reduction="mean") also averages over classes (documented in the README), and mtd's export
    # looks for transformers, which optcheck does not use
    (r"`StaticLossBalancer` weights do not sum to 1\.0", UserWarning),
    (r"reduction: 'mean' divides the total loss by both the batch size and the support size", UserWarning),
    (r"Cannot find transformers package", UserWarning),
)


@contextlib.contextmanager
def library_noise() -> Iterator[None]:
    """Inside: the warnings in ``LIBRARY_NOISE`` and deprecations raised from modelopt are ignored."""
    with warnings.catch_warnings():
        for message, category in LIBRARY_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"modelopt(\..*)?")
        yield
