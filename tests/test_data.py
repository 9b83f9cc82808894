"""Datasets: seeded stratified splits, train-only augmentation, the CIFAR-10 loader on a folder the
test writes, clear errors for missing data, user factories."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from optcheck.build.on_disk import CIFAR10_FILES, cifar10_root
from optcheck.build.data import build_data, make_loader
from optcheck.core.errors import DatasetMissing, RecipeError
from optcheck.recipes.schema import DataConfig


def label_counts(dataset) -> np.ndarray:
    return np.bincount([int(dataset[i][1]) for i in range(len(dataset))], minlength=10)


def test_digits_shapes_sizes_and_stratification():
    data = build_data(DataConfig(dataset="digits"), seed=0)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert data.sizes() == {"train": 1257, "val": 180, "test": 360}  # 1,797 real images
    test_counts = label_counts(data.test)
    assert test_counts.min() >= 35 and test_counts.max() <= 37  # stratified: ~36 per class


def test_splits_are_disjoint_and_cover_the_data():
    data = build_data(DataConfig(dataset="digits", augment=[]), seed=0)
    flat = {split: {tuple(getattr(data, split)[i][0].flatten()[::37].tolist()) for i in range(len(getattr(data, split)))}
            for split in ("train", "val", "test")}
    assert not flat["train"] & flat["test"] and not flat["val"] & flat["test"]


def test_split_depends_on_seed_only():
    a, b, c = (build_data(DataConfig(dataset="digits"), seed=s) for s in (0, 0, 1))
    assert torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.test.images, c.test.images)


def test_augmentation_only_on_train():
    data = build_data(DataConfig(dataset="digits", augment=["hflip", "crop"]), seed=0)
    torch.manual_seed(0)
    train_views = [data.train[0][0] for _ in range(8)]
    assert any(not torch.equal(train_views[0], v) for v in train_views[1:])
    assert torch.equal(data.val[0][0], data.val[0][0]) and torch.equal(data.test[3][0], data.test[3][0])


def test_normalised_with_train_statistics():
    data = build_data(DataConfig(dataset="digits", augment=[]), seed=0)
    x = torch.stack([data.train[i][0] for i in range(len(data.train))])
    assert x.mean().abs() < 1e-3 and (x.std() - 1).abs() < 1e-2


def test_loader_order_is_seeded():
    data = build_data(DataConfig(dataset="synthetic"), seed=0)

    def first_labels(seed):
        torch.manual_seed(123)
        return next(iter(make_loader(data.train, 16, shuffle=True, seed=seed)))[1].tolist()

    assert first_labels(5) == first_labels(5)
    assert first_labels(5) != first_labels(6)


def test_loader_workers_are_seeded():
    """A dataset without a batched transform goes through a DataLoader, with seeded workers."""
    from optcheck.build.data import TensorImages

    data = build_data(DataConfig(dataset="synthetic", augment=["crop"]), seed=0)
    per_sample = TensorImages(data.train.images, data.train.labels, data.train.transform)

    def batch(seed):
        loader = make_loader(per_sample, 8, shuffle=True, seed=seed, num_workers=2)
        assert isinstance(loader, torch.utils.data.DataLoader)
        return next(iter(loader))[0]

    assert torch.equal(batch(3), batch(3))


def test_train_limit_and_test_limit():
    data = build_data(DataConfig(dataset="digits", train_limit=100, test_limit=50), seed=0)
    assert len(data.train) == 100 and len(data.test) == 50 and len(data.val) == 180


def write_cifar_folder(root: Path, n_train_per_batch: int = 20, n_test: int = 30) -> Path:
    """A small folder in the python CIFAR-10 format (pickled dicts of uint8 rows)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n, name):
        labels = (np.arange(n) % 10).tolist()
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as fh:
            # str keys: the official files were pickled by Python 2 and load with str keys
            pickle.dump({"batch_label": name, "labels": labels, "data": data,
                         "filenames": [f"{i}.png" for i in range(n)]}, fh)

    for i in range(1, 6):
        batch(n_train_per_batch, f"data_batch_{i}")
    batch(n_test, "test_batch")
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)],
                     "num_cases_per_batch": n_train_per_batch, "num_vis": 3072}, fh)
    return root


def test_cifar10_loader_on_a_cifar_format_folder(tmp_path):
    root = write_cifar_folder(tmp_path / "data")
    data = build_data(DataConfig(dataset="cifar10", root=str(root), val_fraction=0.2), seed=0)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert data.sizes() == {"train": 80, "val": 20, "test": 30}
    x, y = data.test[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 0
    assert label_counts(data.val).tolist() == [2] * 10  # stratified val split


def test_cifar10_root_is_relative_to_the_recipe(tmp_path):
    write_cifar_folder(tmp_path / "recipes" / "data")
    data = build_data(DataConfig(dataset="cifar10", root="data"), seed=0, base_dir=tmp_path / "recipes")
    assert len(data.test) == 30


def test_cifar10_missing_names_where_it_looked_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTCHECK_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetMissing) as info:
        build_data(DataConfig(dataset="cifar10"), seed=0)
    msg = str(info.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg
    assert "data.root" in msg and "OPTCHECK_DATA_DIR" in msg and "never downloads" in msg
    assert all(name in msg for name in CIFAR10_FILES)


def test_cifar10_partial_folder_lists_the_missing_files(tmp_path):
    root = write_cifar_folder(tmp_path)
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DatasetMissing, match="missing test_batch"):
        build_data(DataConfig(dataset="cifar10", root=str(root)), seed=0)


def test_default_cifar_root(monkeypatch):
    monkeypatch.delenv("OPTCHECK_DATA_DIR", raising=False)
    assert cifar10_root(DataConfig(dataset="cifar10"), None) == Path.home() / ".cache" / "optcheck" / "data"


def make_splits(seed, size=12):
    """A user factory: (train, val, test) TensorDatasets."""
    g = torch.Generator().manual_seed(seed)
    ds = lambda n: torch.utils.data.TensorDataset(torch.rand(n, 1, size, size, generator=g),  # noqa: E731
                                                  torch.arange(n) % 3)
    return ds(30), ds(9), ds(9)


def test_user_factory(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    data = build_data(DataConfig(dataset="test_data:make_splits", options={"size": 10}), seed=0)
    assert data.input_shape == (1, 10, 10) and data.num_classes == 3 and data.sizes()["train"] == 30


def test_user_factory_import_error_names_the_field():
    with pytest.raises(RecipeError, match=r"field 'data.dataset': cannot import 'nope.mod:fn'"):
        build_data(DataConfig(dataset="nope.mod:fn"), seed=0, recipe_path="recipes/x.toml")


def test_batched_loader_equals_torchvisions_per_sample_transform_without_augmentation():
    """The reference: torchvision's Normalize on each sample, collated by a DataLoader."""
    from optcheck.build.data import TensorBatches, TensorImages, _transforms

    cfg = DataConfig(dataset="digits", augment=["crop"], options={"image_size": 16})
    data = build_data(cfg, seed=0)
    ds = data.test
    batched = make_loader(ds, 64, shuffle=False, seed=0)
    assert isinstance(batched, TensorBatches)
    reference = _transforms(cfg, ds.batch_ops.mean, ds.batch_ops.std, 16, train=False)
    per_sample = make_loader(TensorImages(ds.images, ds.labels, reference), 64, shuffle=False, seed=0)
    assert len(batched) == len(per_sample) == 6
    for (xa, ya), (xb, yb) in zip(batched, per_sample, strict=True):
        assert torch.equal(ya, yb)
        torch.testing.assert_close(xa, xb, rtol=0, atol=1e-6)


def test_batched_augmentation_is_a_padded_crop_and_flip_of_each_image():
    data = build_data(DataConfig(dataset="digits", augment=["crop", "hflip"], options={"image_size": 16}), seed=0)
    ops = data.train.batch_ops
    assert ops.crop_padding == 4 and ops.hflip
    x = data.train.images[:64]
    out = ops(x, torch.Generator().manual_seed(1))
    mean, std = torch.tensor(ops.mean).view(1, -1, 1, 1), torch.tensor(ops.std).view(1, -1, 1, 1)
    raw = out * std + mean  # undo the normalisation: each image is a window of its zero-padded self
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    shifts, flips = set(), 0
    for i in range(len(x)):
        windows = {(t, l): padded[i, :, t:t + 16, l:l + 16] for t in range(9) for l in range(9)}
        hits = [(t, l, f) for (t, l), w in windows.items() for f in (False, True)
                if torch.allclose(w.flip(-1) if f else w, raw[i], atol=1e-5)]
        assert hits, f"image {i} is not a crop of its padded self"
        shifts.add(hits[0][:2])
        flips += hits[0][2] and not any(not f for _t, _l, f in hits)
    assert len(shifts) > 10 and 10 < flips < 54  # random offsets, about half the images flipped


def test_batched_loader_reshuffles_every_epoch_and_repeats_with_its_seed():
    data = build_data(DataConfig(dataset="digits", augment=["crop"], options={"image_size": 16}), seed=0)

    def epochs(seed):
        loader = make_loader(data.train, 32, shuffle=True, seed=seed)
        return [torch.cat([y for _x, y in loader]) for _ in range(2)], next(iter(loader))[0]

    (a1, a2), xa = epochs(3)
    (b1, b2), xb = epochs(3)
    assert torch.equal(a1, b1) and torch.equal(a2, b2) and torch.equal(xa, xb)
    assert not torch.equal(a1, a2)  # a new order each epoch
    assert sorted(a1.tolist()) == sorted(data.train.labels.tolist())  # every sample once per epoch
    (c1, _), _ = epochs(4)
    assert not torch.equal(a1, c1)


def test_a_subset_of_tensor_images_is_batched_too():
    from optcheck.build.data import TensorBatches

    data = build_data(DataConfig(dataset="digits", options={"image_size": 16}), seed=0)
    subset = torch.utils.data.Subset(data.val, range(50))
    loader = make_loader(subset, 16, shuffle=False, seed=0)
    assert isinstance(loader, TensorBatches) and len(loader) == 4
    assert torch.equal(torch.cat([y for _x, y in loader]), data.val.labels[:50])


def test_digits_at_their_own_size_in_grey_are_the_raw_images_and_the_crop_padding_is_the_recipes():
    from sklearn.datasets import load_digits

    cfg = DataConfig(dataset="digits", augment=["crop"], crop_padding=1, options={"image_size": 8, "channels": 1})
    data = build_data(cfg, seed=0)
    assert data.input_shape == (1, 8, 8)
    raw = torch.from_numpy(load_digits().images).float().div(16.0)
    stored = data.test.images[:, 0]
    assert all(bool((raw == img).all(dim=(1, 2)).any()) for img in stored[:20])  # not resized: the same pixels
    assert data.train.batch_ops.crop_padding == 1
    x = data.train.images[:32]
    mean, std = torch.tensor(data.train.batch_ops.mean).view(1, -1, 1, 1), torch.tensor(data.train.batch_ops.std).view(1, -1, 1, 1)
    out = data.train.batch_ops(x, torch.Generator().manual_seed(0)) * std + mean
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(len(x)):  # shifted by at most one pixel
        assert any(torch.allclose(padded[i, :, t:t + 8, l:l + 8], out[i], atol=1e-5) for t in range(3) for l in range(3))
    rgb = build_data(DataConfig(dataset="digits", options={"image_size": 8}), seed=0)
    assert rgb.input_shape == (3, 8, 8) and torch.equal(rgb.test.images[:, 0], rgb.test.images[:, 2])
