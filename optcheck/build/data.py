"""Datasets by name, seeded train / val / test splits and seeded loaders.

``digits``    scikit-learn's ``load_digits`` (1,797 real 8x8 images, shipped in the wheel),
              resized to channels x image_size x image_size (options; defaults 3 and 32, the
              shipped recipes use 1 x 8 x 8: the images' own size).
``cifar10``   torchvision's CIFAR-10 from a local folder; never downloaded.
``synthetic`` tiny class-prototype images for unit tests.
``pkg.mod:fn`` a user factory returning ``{"train", "val", "test"}`` datasets (or a 3-tuple).

The train split alone is augmented (random horizontal flip, padded random crop). The val split feeds
the FastNAS score function and best-epoch selection; the test split is used only to judge budgets.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from optcheck.core.errors import Problem, RecipeError
from optcheck.build.on_disk import (CIFAR10_FILES, CIFAR10_MEAN, CIFAR10_STD, DATA_DIR_ENV, check_cifar10, cifar10_root)  # noqa: F401
from optcheck.core.factories import load_factory

if TYPE_CHECKING:  # annotations only: the build layer sits below the recipes
    from optcheck.recipes.schema import DataConfig



@dataclass
class DataBundle:
    """The three splits of one dataset, ready for loaders."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class BatchOps:
    """The per-sample transform of a ``TensorImages`` applied to a whole batch at once: padded random
    crop (zero fill, as torchvision's ``RandomCrop(size, padding)``), random horizontal flip,
    normalization. Random choices come from the loader's own seeded generator."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    hflip: bool = False

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, _c, h, w = x.shape
        if self.crop_padding:
            p = self.crop_padding
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            top = torch.randint(0, 2 * p + 1, (n,), generator=generator)
            left = torch.randint(0, 2 * p + 1, (n,), generator=generator)
            rows = (top[:, None] + torch.arange(h))[:, None, :, None]  # n,1,h,1
            cols = (left[:, None] + torch.arange(w))[:, None, None, :]  # n,1,1,w
            x = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None],
                       rows, cols]
        if self.hflip:
            flip = torch.rand(n, generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std


class PerSample:
    """A ``BatchOps`` applied to one image (``dataset[i]``), drawing from torch's global generator:
    the per-sample view of the batched transform, without importing torchvision."""

    def __init__(self, ops: BatchOps):
        self.ops = ops

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops(x[None], None)[0]

    def __repr__(self) -> str:
        return f"PerSample({self.ops!r})"


class TensorImages(Dataset):
    """Images held as one float tensor in [0, 1], with a per-sample transform.

    With ``batch_ops`` (the same transform, batched) ``make_loader`` cuts whole batches out of the
    tensor instead of transforming and collating sample by sample: measured on the digits recipe,
    a train epoch's loading went from 0.21-0.45 s to about 0.01 s (see README, "Speed today").
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None,
                 batch_ops: BatchOps | None = None):
        self.images, self.labels, self.transform, self.batch_ops = images, labels, transform, batch_ops

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])


class TensorBatches:
    """A loader over a ``TensorImages`` with ``batch_ops``: seeded shuffling (a new order every epoch,
    from one generator), batches sliced from the tensors, the transform applied per batch. Iterable
    any number of times and sized, like a ``DataLoader``."""

    def __init__(self, dataset: TensorImages, batch_size: int, *, shuffle: bool, seed: int,
                 indices: torch.Tensor | None = None):
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.indices = indices
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.indices) if self.indices is not None else len(self.dataset)
        return (n + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        ds = self.dataset
        order = self.indices if self.indices is not None else torch.arange(len(ds))
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator)]
        for start in range(0, len(order), self.batch_size):
            ix = order[start:start + self.batch_size]
            yield ds.batch_ops(ds.images[ix], self.generator), ds.labels[ix]


def _transforms(cfg: DataConfig, mean, std, size: int, train: bool, pil: bool = False):
    from torchvision.transforms import v2

    ops: list[Any] = []
    if train and "crop" in cfg.augment:
        ops.append(v2.RandomCrop(size, padding=cfg.crop_padding))
    if train and "hflip" in cfg.augment:
        ops.append(v2.RandomHorizontalFlip())
    if pil:
        ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    ops.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(ops)


def _split_indices(labels: np.ndarray, cfg: DataConfig, seed: int, with_test: bool):
    """Stratified, seeded index split into (train, val, test)."""
    from sklearn.model_selection import train_test_split

    check_split_sizes(labels, cfg, with_test)
    idx = np.arange(len(labels))
    test = np.array([], dtype=int)
    if with_test:
        idx, test = train_test_split(idx, test_size=cfg.test_fraction, stratify=labels,
                                     random_state=seed)
    val_size = cfg.val_fraction * len(labels) / len(idx)
    train, val = train_test_split(idx, test_size=val_size, stratify=labels[idx],
                                  random_state=seed + 1)
    return np.sort(train), np.sort(val), np.sort(test)


def check_split_sizes(labels: np.ndarray, cfg: DataConfig, with_test: bool, path: str = "<recipe>") -> None:
    """A stratified split puts every class in every split: each split needs at least one sample per
    class, and each class one sample per split. Checked here, named by field, instead of scikit-learn's
    ValueError from deep inside ``train_test_split``."""
    import math

    n = len(labels)
    classes, counts = np.unique(labels, return_counts=True)
    k = len(classes)
    parts = [("val_fraction", cfg.val_fraction)] + ([("test_fraction", cfg.test_fraction)] if with_test else [])
    for field, fraction in parts:
        size = math.ceil(fraction * n)
        if size < k:
            need = k / n
            raise RecipeError(path, [Problem(
                f"data.{field}", f"{field} = {fraction} gives {size} of {n} samples to a split that a stratified "
                f"split must give one sample of each of {k} classes",
                f">= {math.ceil(need * 1000) / 1000} for this dataset",
                f"raise data.{field} to at least {math.ceil(need * 1000) / 1000}, or use a dataset with more samples")])
    need = 1 + len(parts)
    if counts.min() < need:
        rare = [int(c) for c, m in zip(classes, counts) if m < need][:5]
        raise RecipeError(path, [Problem(
            "data.dataset", f"classes {rare} have fewer than {need} samples: a stratified split needs one of each "
            f"class in train, val{' and test' if with_test else ''}",
            fix="give every class more samples (data.options, or the dataset), or drop the rare classes")])


def _limit(indices: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or limit >= len(indices):
        return indices
    return np.sort(np.random.default_rng(seed).choice(indices, size=limit, replace=False))


def _from_tensors(name: str, images: torch.Tensor, labels: np.ndarray, cfg: DataConfig,
                  seed: int) -> DataBundle:
    train, val, test = _split_indices(labels, cfg, seed, with_test=True)
    train, test = _limit(train, cfg.train_limit, seed), _limit(test, cfg.test_limit, seed)
    mean = images[torch.from_numpy(train)].mean(dim=(0, 2, 3)).tolist()
    std = images[torch.from_numpy(train)].std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
    y = torch.from_numpy(labels).long()

    def part(ix, train_split):
        ix = torch.from_numpy(ix)
        ops = BatchOps(tuple(mean), tuple(std), cfg.crop_padding if train_split and "crop" in cfg.augment else 0,
                       train_split and "hflip" in cfg.augment)
        return TensorImages(images[ix], y[ix], PerSample(ops), ops)

    return DataBundle(name, part(train, True), part(val, False), part(test, False),
                      int(labels.max()) + 1, tuple(images.shape[1:]))


def digits(cfg: DataConfig, seed: int) -> DataBundle:
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = torch.from_numpy(raw.images).float().div(16.0).unsqueeze(1)  # N,1,8,8 in [0,1]
    size, channels = int(cfg.options.get("image_size", 32)), int(cfg.options.get("channels", 3))
    if size != images.shape[-1]:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear",
                                                 align_corners=False).clamp(0, 1)
    images = images.repeat(1, channels, 1, 1)
    return _from_tensors("digits", images.contiguous(), raw.target.astype(np.int64), cfg, seed)


def synthetic(cfg: DataConfig, seed: int) -> DataBundle:
    opts = {"samples": 240, "classes": 4, "image_size": 16, "noise": 0.15, **cfg.options}
    g = torch.Generator().manual_seed(seed)
    size, k = int(opts["image_size"]), int(opts["classes"])
    protos = torch.rand(k, 3, size, size, generator=g)
    labels = torch.arange(int(opts["samples"])) % k
    noise = float(opts["noise"]) * torch.randn(len(labels), 3, size, size, generator=g)
    images = (protos[labels] + noise).clamp(0, 1)
    return _from_tensors("synthetic", images, labels.numpy(), cfg, seed)


def cifar10(cfg: DataConfig, seed: int, base_dir: Path | None = None) -> DataBundle:
    root = cifar10_root(cfg, base_dir)
    check_cifar10(root)  # before importing torchvision (1.7 s here): a missing folder is a skip
    from torchvision.datasets import CIFAR10

    class LocalCIFAR10(CIFAR10):
        # torchvision checks md5 sums of the official archive; presence is what we need (and what
        # lets tests use a small CIFAR-format folder). check_cifar10 already named what is missing.
        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:  # the same as torchvision's, less the md5 check
            import pickle

            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as fh:
                self.classes = pickle.load(fh, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    train_aug = LocalCIFAR10(str(root), train=True, download=False,
                             transform=_transforms(cfg, CIFAR10_MEAN, CIFAR10_STD, 32, True, pil=True))
    train_plain = LocalCIFAR10(str(root), train=True, download=False,
                               transform=_transforms(cfg, CIFAR10_MEAN, CIFAR10_STD, 32, False, pil=True))
    test_set = LocalCIFAR10(str(root), train=False, download=False,
                            transform=_transforms(cfg, CIFAR10_MEAN, CIFAR10_STD, 32, False, pil=True))
    labels = np.asarray(train_aug.targets)
    train, val, _ = _split_indices(labels, cfg, seed, with_test=False)
    train = _limit(train, cfg.train_limit, seed)
    test = _limit(np.arange(len(test_set)), cfg.test_limit, seed)
    return DataBundle("cifar10", Subset(train_aug, train.tolist()), Subset(train_plain, val.tolist()),
                      Subset(test_set, test.tolist()), len(train_aug.classes), (3, 32, 32))


def from_factory(cfg: DataConfig, seed: int, path: str = "<recipe>") -> DataBundle:
    import inspect

    factory = load_factory(cfg.dataset, "data.dataset", path)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = None
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        allowed = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if "seed" not in allowed:
            raise RecipeError(path, [Problem("data.dataset", f"{cfg.dataset} takes no 'seed' argument: optcheck "
                                             "calls it as factory(seed=..., **data.options)",
                                             fix="add a seed parameter (and use it for any randomness)")])
        for key in cfg.options:
            if key not in allowed:
                raise RecipeError(path, [Problem(f"data.options.{key}", f"{cfg.dataset} takes no argument {key!r}",
                                                 ", ".join(a for a in allowed if a != "seed") or "no options",
                                                 "remove it from data.options")])
    made = factory(seed=seed, **cfg.options)
    if isinstance(made, DataBundle):
        return made
    if isinstance(made, dict) and {"train", "val", "test"} <= set(made):
        train, val, test = made["train"], made["val"], made["test"]
        num_classes = made.get("num_classes")
    elif isinstance(made, (tuple, list)) and len(made) == 3:
        train, val, test = made
        num_classes = None
    else:
        raise RecipeError(path, [Problem("data.dataset", f"{cfg.dataset} returned {type(made).__name__}"
                                         f"{' with keys ' + str(sorted(made)) if isinstance(made, dict) else ''}",
                                         "a dict with 'train', 'val', 'test' (and optionally 'num_classes'), or a "
                                         "3-tuple of datasets", "return the three splits")])
    for split, ds in (("train", train), ("val", val), ("test", test)):
        if not hasattr(ds, "__len__") or not hasattr(ds, "__getitem__"):
            raise RecipeError(path, [Problem("data.dataset", f"the {split} split from {cfg.dataset} is a "
                                             f"{type(ds).__name__}, not a map-style dataset",
                                             fix="return torch.utils.data.Dataset objects (len and indexing)")])
    if len(train) == 0:
        raise RecipeError(path, [Problem("data.dataset", f"the train split from {cfg.dataset} is empty",
                                         fix="return a non-empty train split")])
    if num_classes is None:
        num_classes = 1 + max(int(train[i][1]) for i in range(len(train)))
    return DataBundle(cfg.dataset, train, val, test, int(num_classes), tuple(train[0][0].shape))


CACHEABLE = ("digits", "synthetic")  # built from tensors by optcheck itself: cached as tensors


def data_key(cfg: DataConfig, seed: int) -> str | None:
    """The cache key of a built-in tensor dataset's splits: its settings, the seed, scikit-learn's
    version (its ``load_digits`` and ``train_test_split``) and optcheck's data code. None for the
    others (CIFAR-10, factories: they are read from their own files)."""
    if cfg.dataset not in CACHEABLE:
        return None
    import hashlib
    import json
    from importlib.metadata import version

    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    body = {"data": cfg.model_dump(mode="json", exclude={"root"}), "seed": cfg.seed_for(seed), "code": code,
            "sklearn": version("scikit-learn"), "torch": version("torch")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def bundle_to_file(bundle: DataBundle, path: Path) -> None:
    """The splits of a tensor dataset as one file of tensors and plain values (``weights_only`` loads it)."""
    splits = {}
    for split in ("train", "val", "test"):
        ds: TensorImages = getattr(bundle, split)
        ops = ds.batch_ops
        splits[split] = {"images": ds.images, "labels": ds.labels, "mean": list(ops.mean), "std": list(ops.std),
                         "crop_padding": ops.crop_padding, "hflip": ops.hflip}
    torch.save({"name": bundle.name, "num_classes": bundle.num_classes, "input_shape": list(bundle.input_shape),
                "splits": splits}, path)


def bundle_from_file(path: Path) -> DataBundle:
    raw = torch.load(path, weights_only=True)
    parts = {}
    for split, d in raw["splits"].items():
        ops = BatchOps(tuple(d["mean"]), tuple(d["std"]), d["crop_padding"], d["hflip"])
        parts[split] = TensorImages(d["images"], d["labels"], PerSample(ops), ops)
    return DataBundle(raw["name"], parts["train"], parts["val"], parts["test"], raw["num_classes"],
                      tuple(raw["input_shape"]))


def build_data(cfg: DataConfig, seed: int, base_dir: Path | None = None,
               recipe_path: str = "<recipe>") -> DataBundle:
    """The splits of ``cfg``'s dataset, drawn with ``cfg.seed_for(seed)`` (``split_seed`` when pinned)."""
    seed = cfg.seed_for(seed)
    if cfg.dataset == "digits":
        return digits(cfg, seed)
    if cfg.dataset == "synthetic":
        return synthetic(cfg, seed)
    if cfg.dataset == "cifar10":
        return cifar10(cfg, seed, base_dir)
    return from_factory(cfg, seed, recipe_path)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int,
                num_workers: int = 0, pin_memory: bool = False) -> DataLoader | TensorBatches:
    """A loader whose shuffling and worker RNGs derive from ``seed`` alone: batches cut from the
    tensors (``TensorBatches``) for a ``TensorImages`` with ``batch_ops`` (or a ``Subset`` of one),
    else a ``DataLoader``."""
    base, indices = dataset, None
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, TensorImages):
        base, indices = dataset.dataset, torch.as_tensor(list(dataset.indices), dtype=torch.long)
    if isinstance(base, TensorImages) and base.batch_ops is not None and not pin_memory:
        return TensorBatches(base, batch_size, shuffle=shuffle, seed=seed, indices=indices)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed), worker_init_fn=_seed_worker,
                      pin_memory=pin_memory)
