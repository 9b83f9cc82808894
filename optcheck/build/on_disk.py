"""Datasets that must be on disk (CIFAR-10): where they are looked for, and whether they are there.

No torch here: collection asks whether a recipe's data is present (a missing dataset skips its items
with the path looked at) without importing anything heavy.
"""

from __future__ import annotations

import os
from pathlib import Path

from optcheck.core.errors import DatasetMissing

CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch", "batches.meta")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
DATA_DIR_ENV = "OPTCHECK_DATA_DIR"


def cifar10_root(cfg, base_dir: Path | None) -> Path:
    """Where CIFAR-10 is looked for: ``data.root`` (relative to the recipe's folder), else
    ``$OPTCHECK_DATA_DIR``, else ``~/.cache/optcheck/data``."""
    if cfg.root is not None:
        root = Path(os.path.expanduser(cfg.root))
        return root if root.is_absolute() or base_dir is None else base_dir / root
    return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".cache" / "optcheck" / "data")


def check_cifar10(root: Path) -> None:
    """Raise ``DatasetMissing`` unless the python version of CIFAR-10 lies under ``root``."""
    folder = root / "cifar-10-batches-py"
    missing = [f for f in CIFAR10_FILES if not (folder / f).is_file()]
    if missing:
        raise DatasetMissing(
            f"CIFAR-10 not found: looked in {folder} and missing {', '.join(missing)}. "
            f"Extract cifar-10-python.tar.gz so that {folder} holds {', '.join(CIFAR10_FILES)}, or "
            f"point the recipe's data.root (or ${DATA_DIR_ENV}) at the folder that contains "
            "cifar-10-batches-py. optcheck never downloads data."
        )


def data_missing(recipe) -> str | None:
    """Why ``recipe``'s data is not there (the skip reason), or None when it is or cannot be known
    without loading it (a factory's data is checked when it is loaded)."""
    if recipe.data.dataset != "cifar10":
        return None
    try:
        check_cifar10(cifar10_root(recipe.data, recipe.path.parent if recipe.path else None))
    except DatasetMissing as exc:
        return str(exc)
    return None
