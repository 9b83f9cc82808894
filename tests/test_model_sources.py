"""Every model source the README advertises runs a whole FastNAS recipe through pytest: the built-in
names, a torchvision classification model, and a user's ``module:function`` factory (the built-in
ResNet20 is the digits recipe's own test). Before, ``torchvision:resnet18`` on small images died at
collection in a training-mode forward of a batch of one, and took the whole session with it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

RECIPE = """
seed = 0
[data]
dataset = "synthetic"
batch_size = 32
options = {{ samples = 240, classes = 4, image_size = {size} }}
[model]
name = "{model}"
[train]
epochs = {epochs}
lr = {lr}
warmup_epochs = 0.5
[[steps]]
kind = "fastnas"
flops = "70%"
channel_divisor = {divisor}
feature_divisor = {divisor}
calib_batches = 2
[[steps]]
kind = "finetune"
epochs = 1
lr_scale = 0.1
[budgets]
flops_below = "80%"
accuracy_drop_under = 0.9
restore_roundtrip = true
"""

SOURCES = {
    # name: (model, epochs, divisor, image size, lr)
    "builtin_small_cnn": ("small_cnn", 6, 4, 16, 0.4),
    # ImageNet's stem divides the side by 32: at 16x16 it learned 31% (chance 25%); at 32x32, 94%
    "torchvision_resnet18": ("torchvision:resnet18", 8, 32, 32, 0.1),
    "user_factory": ("hostile_factories:plain_cnn", 8, 4, 16, 0.4),
}


@pytest.mark.slow
def test_every_model_source_runs_a_whole_fastnas_recipe(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "pytest.ini").write_text("[pytest]\noptcheck_ledger = off\n")
    for name, (model, epochs, divisor, size, lr) in SOURCES.items():
        (tmp_path / "recipes" / f"{name}.toml").write_text(
            RECIPE.format(model=model, epochs=epochs, divisor=divisor, size=size, lr=lr))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--optcheck", "-rA", "-q",
                           "--optcheck-no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(HERE)})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for name in SOURCES:
        for budget in ("baseline_accuracy_at_least", "flops_below", "accuracy_drop_under", "restore_roundtrip"):
            assert f"PASSED recipes/{name}.toml::{budget}" in out, out[-4000:]
