"""The team's compression code, called by optcheck at its steps (``recipes/acme.toml``).

- ``search_score``: the FastNAS score (``score = "acme.compress:search_score"``): macro-F1 on the val
  split, the metric the team ships on; optcheck calls it as Model Optimizer's ``score_func`` with the
  val loader and the device.
- ``sparsify_2_4``: a ``kind = "custom"`` step: Model Optimizer's 2:4 sparsity with the team's own rules
  (the stem convolution and the classifier stay dense), saved and restored with ``mto.save`` /
  ``mto.restore`` (``checkpoint = "modelopt"``).
- ``calibrate``: the quantize step's ``forward_loop``: the calibration batches through the model, in
  eval mode, as the team's deployment runs it.
"""

from __future__ import annotations

import torch

# the team's 2:4 rules: every conv but the stem, no linear layer (modelopt's rule format: pattern -> config,
# None = left dense)
SPARSE_RULES = {"nn.Conv2d": {"*": {}, "features.0.0": None}, "nn.Linear": {"*": None}}


def search_score(model, loader, device) -> float:
    """Higher is better: the subnet's macro-F1 on the val split (BatchNorm statistics as FastNAS set them)."""
    from acme.metrics import macro_f1

    with torch.no_grad():
        return macro_f1(model, loader, device)


def sparsify_2_4(model, run):
    """2:4 weight sparsity with the team's rules; returns the sparsified model (changed in place)."""
    import modelopt.torch.sparsity as mts

    model.eval()
    return mts.sparsify(model, [("sparse_magnitude", SPARSE_RULES)], config={"verbose": False})


def calibrate(model, batches) -> None:
    """Model Optimizer's ``forward_loop``: run the calibration inputs (optcheck hands the first
    ``calib_batches`` of the train split) through the model so its quantizers see real ranges."""
    model.eval()
    with torch.no_grad():
        for x in batches:
            model(x)
