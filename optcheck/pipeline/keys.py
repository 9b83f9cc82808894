"""Content keys of the pipeline's artifacts: what, if changed, must rebuild a stage.

A stage's key hashes its own settings, the keys of the stages it builds on, and the environment
(seed, device, library versions, the source of the optcheck modules that build artifacts). The
baseline's key also holds a fingerprint of the data's *contents* and the source of any model or
data factory. So editing a fine-tune setting rebuilds only the fine-tuned model; moving the dataset
to another folder rebuilds nothing; editing the model factory rebuilds everything.

Only settings that cannot change an artifact are left out: the recipe's name and description, and
``data.root`` (the contents count, not the path); ``tests/test_cache.py`` builds twice with each of
them changed and checks the artifacts are bit-identical. ``data.num_workers`` is in the key (with
loader workers, augmentation randomness comes from the worker seeds) and so is
``data.eval_batch_size`` (the FastNAS score function evaluates in batches of that size, and a
convolution's last bits depend on the batch size). On CPU the key holds the numerics fingerprint
(``numerics.key_material``: kernel capability, instruction set, ``ATEN_CPU_CAPABILITY`` /
``ONEDNN_MAX_CPU_ISA``) and the thread count: a cache hit must equal what a cold build on this
machine would produce.
"""

from __future__ import annotations

from optcheck.core.hashing import code_digest, digest, file_digest

import hashlib
import inspect
import re
from typing import Any

# optcheck's code that decides what an artifact contains (``core.hashing.code_digest``): editing it
# invalidates the cache; editing a report or a budget's judge does not rebuild anything
BUILD_CODE = ("build", "steps", "core/compat.py", "core/numerics.py", "pipeline/run.py", "pipeline/checkpoints.py")
_NOT_IN_KEY = {"root"}
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def optcheck_build_id() -> str:
    """optcheck's version plus a hash of the code that builds artifacts."""
    import optcheck

    return f"{optcheck.__version__}+{code_digest(*BUILD_CODE)[:12]}"


def environment(device) -> dict[str, str]:
    """The parts of the machine and software stack an artifact depends on."""
    import torch

    from optcheck.core.numerics import dist_version

    dev = device.type
    if dev == "cuda":
        dev = f"cuda:{torch.cuda.get_device_name(device)}"
    env = {
        "device": dev,
        "torch": torch.__version__,
        "torchvision": dist_version("torchvision"),
        "modelopt": dist_version("nvidia-modelopt"),
        "torchprofile": dist_version("torchprofile"),
        "optcheck": optcheck_build_id(),
    }
    if device.type == "cpu":  # CPU kernels split reductions by thread count: it changes the weights
        from optcheck.core.numerics import key_material

        env["threads"] = str(torch.get_num_threads())
        env.update(key_material(device))
    return env


def source_digest(spec: str) -> str | None:
    """Hash of the source file that defines a ``package.module:function`` factory (None if builtin)."""
    if ":" not in spec or spec.startswith("torchvision:"):
        return None
    from optcheck.core.factories import load_factory

    fn = load_factory(spec, "factory", "<key>")
    try:
        return file_digest(inspect.getsourcefile(fn) or "")
    except (OSError, TypeError):
        return digest(repr(fn))


# -- data fingerprints ---------------------------------------------------------------------------------

def dataset_fingerprint(dataset) -> str:
    """A hash of a dataset's samples and labels (not its location).

    Known containers are hashed from their arrays (fast); any other dataset is read sample by sample
    under a fixed RNG seed so random transforms do not change the hash.
    """
    h = hashlib.sha256()
    _feed(h, dataset, {})
    return h.hexdigest()


def _feed(h, ds, seen: dict[int, str]) -> None:
    import numpy as np
    import torch
    from torch.utils.data import Subset, TensorDataset

    from optcheck.build.data import TensorImages

    def arr(x) -> None:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().contiguous().numpy()
        x = np.ascontiguousarray(np.asarray(x))
        h.update(f"{x.dtype}{x.shape}".encode())
        h.update(x.tobytes())

    if isinstance(ds, Subset):
        h.update(b"subset")
        arr(np.asarray(ds.indices, dtype=np.int64))
        if id(ds.dataset) in seen:  # two splits over one base (e.g. CIFAR train/val): hash it once
            h.update(seen[id(ds.dataset)].encode())
            return
        sub = hashlib.sha256()
        _feed(sub, ds.dataset, seen)
        seen[id(ds.dataset)] = sub.hexdigest()
        h.update(seen[id(ds.dataset)].encode())
    elif isinstance(ds, TensorImages):
        arr(ds.images)
        arr(ds.labels)
        h.update(repr(ds.transform).encode())
        h.update(repr(ds.batch_ops).encode())
    elif isinstance(ds, TensorDataset):
        for t in ds.tensors:
            arr(t)
    elif hasattr(ds, "data") and hasattr(ds, "targets"):  # torchvision's CIFAR, MNIST, ...
        arr(ds.data)
        arr(np.asarray(ds.targets))
        h.update(repr(getattr(ds, "transform", None)).encode())
    else:
        h.update(type(ds).__qualname__.encode())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for i in range(len(ds)):
                x, y = ds[i][:2]
                arr(x)
                arr(np.asarray(y))


def data_fingerprint(bundle) -> str:
    return digest({split: dataset_fingerprint(getattr(bundle, split)) for split in ("train", "val", "test")}
                  | {"classes": bundle.num_classes, "shape": list(bundle.input_shape)})


# -- stage keys ----------------------------------------------------------------------------------------

def stage_keys(recipe, data_bundle, device, seed: int,
               stage_threads: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """The key material of every stage of ``recipe``: ``{stage: material}``.

    The first stage (the baseline) hashes the data's contents, the model and training settings; each
    later stage hashes its parent's key, its step's table and what its kind adds (``StepKind.key``).
    ``material["key"]`` is the hash; the rest is kept in the cache manifest to explain a rebuild.
    ``stage_threads`` names the stages built with another thread count than the process's (CPU).
    """
    from optcheck.steps.registry import plan

    env = environment(device)
    out: dict[str, dict[str, Any]] = {}

    def add(stage: str, material: dict[str, Any]) -> None:
        own = env
        if stage_threads and stage in stage_threads and "threads" in env:
            own = {**env, "threads": str(stage_threads[stage])}
        material = {"stage": stage, "env": own, **material}
        out[stage] = {**material, "key": digest(material)}

    for stage in plan(recipe):
        root = stage.name if stage.parent is None else next(iter(out))  # the baseline: the first stage
        extra = stage.kind.key(recipe, stage.step, out, root) if stage.kind.key is not None else {}
        if stage.parent is None:
            add(stage.name, {
                "seed": seed, "data": recipe.data.model_dump(exclude=_NOT_IN_KEY),
                "data_fingerprint": data_fingerprint(data_bundle), "data_factory": source_digest(recipe.data.dataset),
                "model": recipe.model.model_dump(exclude={"checkpoint"}), "model_factory": source_digest(recipe.model.name),
                "train": recipe.train.model_dump(), "metrics": metrics_material(recipe),
                "team_code": team_code(recipe.train.model_dump()), **extra,
                **({"trained_weights": trained_weights(recipe, data_bundle, seed)} if recipe.model.pretrained else {}),
            })
            continue
        table = stage.step.model_dump(exclude={"name"})
        add(stage.name, {"after": out[stage.parent]["key"], "kind": stage.kind.kind, "step": table,
                         "team_code": team_code(table), **extra})
    return out


def trained_weights(recipe, data_bundle, seed: int) -> str:
    """The weights a ``model.pretrained`` factory returns, hashed (names, dtypes, shapes, bytes): the
    factory reads them from somewhere its source does not show (a file, a registry), so its source hash
    alone would keep a stale baseline when the team ships new weights. Costs one factory call per key."""
    import hashlib

    import torch

    from optcheck.build.models import build_model

    model = build_model(recipe.model, data_bundle.num_classes, data_bundle.input_shape[0], seed=seed,
                        path=str(recipe.path))
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def team_code(table: dict[str, Any]) -> dict[str, str | None]:
    """The source hash of every ``package.module:function`` a table names (a training function, a score,
    a forward loop, a compression function): editing the team's code rebuilds what it built."""
    out = {}
    for field, value in table.items():
        if isinstance(value, str) and _FACTORY.match(value) and not value.startswith("torchvision:"):
            out[field] = source_digest(value)
    return out


def metrics_material(recipe) -> list[dict[str, Any]]:
    """The team's metrics (measured on every stage, kept with its metrics): their tables and sources."""
    return [{**m.model_dump(), "source": source_digest(m.function)} for m in getattr(recipe, "metrics", [])]


def stage_lineage(recipe, seed: int) -> dict[str, str]:
    """``{stage: signature}``: what each stage is built from, read from the recipe alone (no data, no
    torch): the seed, ``[data]``, ``[model]``, ``[train]`` and the step tables up to the stage. Two
    recipes' stages with one signature are one artifact (one cache key) in a session; the scheduler
    uses it to find the stages every recipe waits for (``schedule.stage_threads``)."""
    from optcheck.steps.registry import plan

    out: dict[str, str] = {}
    for stage in plan(recipe):
        if stage.parent is None:
            out[stage.name] = digest({"seed": seed, "data": recipe.data.model_dump(exclude=_NOT_IN_KEY),
                                      "model": recipe.model.model_dump(), "train": recipe.train.model_dump(),
                                      "metrics": [m.model_dump() for m in getattr(recipe, "metrics", [])]})
        else:
            out[stage.name] = digest({"after": out[stage.parent], "kind": stage.kind.kind,
                                      "step": stage.step.model_dump(exclude={"name"})})
    return out
