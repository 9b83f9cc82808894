"""Trained weights from a team's checkpoint file, and torchvision's pretrained weights, without a download.

A checkpoint is a state dict: ``.safetensors`` (read with safetensors: no pickle) or ``.pt`` / ``.pth``
(``torch.load(weights_only=True)``: tensors and plain containers only). Every way it can fail is one
``RecipeError`` that names the file: missing (with the path tried), unreadable, not a state dict (with
the keys it holds and ``checkpoint_key``), or not the model's (the first mismatching key, both shapes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optcheck.core.errors import Problem, RecipeError


def checkpoint_path(checkpoint: str, recipe_path: str | Path | None) -> Path:
    """``model.checkpoint`` resolved: relative to the recipe's folder (``~`` expanded)."""
    path = Path(checkpoint).expanduser()
    if path.is_absolute() or recipe_path is None:
        return path
    return Path(recipe_path).parent / path


def read_state_dict(path: Path, key: str | None, recipe: str) -> dict[str, Any]:
    """The state dict in ``path`` (``key``: the entry of a dict saved with more than the weights)."""
    import torch

    if not path.is_file():
        raise RecipeError(recipe, [Problem("model.checkpoint", f"no checkpoint file at {path}",
                                           fix="check the path (relative to the recipe's folder), or commit / "
                                               "download the file there")])
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a file that does not load is the finding
        pickle = "weights_only" in str(exc) or "Unsupported global" in str(exc)
        raise RecipeError(recipe, [Problem(
            "model.checkpoint", f"{path} does not load: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
            fix=("the file pickles more than tensors (torch.load refuses it with weights_only=True): save "
                 "model.state_dict() alone, e.g. with safetensors.torch.save_file") if pickle else
                "check the file (a state dict saved with torch.save or safetensors)")]) from None
    if key is not None:
        if not isinstance(state, dict) or key not in state:
            keys = sorted(map(str, state)) if isinstance(state, dict) else []
            raise RecipeError(recipe, [Problem("model.checkpoint_key", f"{path} has no entry {key!r}",
                                               ", ".join(keys[:20]) or "(not a dict)", "name one of its entries")])
        state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = sorted(map(str, state))[:10] if isinstance(state, dict) else []
        holders = [k for k in keys if isinstance(state[k], dict)]
        raise RecipeError(recipe, [Problem(
            "model.checkpoint", f"{path} is not a state dict ({type(state).__name__}"
            + (f" with entries {', '.join(keys)}" if keys else "") + ")",
            fix=(f"name the entry that holds the weights: checkpoint_key = {holders[0]!r}" if holders else
                 "save model.state_dict() (a dict of tensors)"))])
    return state


def load_into(model, state: dict[str, Any], path: Path, recipe: str) -> None:
    """``model.load_state_dict(state)``, strictly; a checkpoint of another architecture is one error
    naming the file, the first mismatching key and both shapes."""
    own = model.state_dict()
    for name, tensor in state.items():
        if name in own and tuple(own[name].shape) != tuple(tensor.shape):
            raise RecipeError(recipe, [Problem(
                "model.checkpoint", f"{path} does not fit the model of [model]: {name} is {list(tensor.shape)} in "
                f"the checkpoint and {list(own[name].shape)} in the model",
                fix="build the model the checkpoint was saved from (model.name, model.options), or point "
                    "model.checkpoint at its checkpoint")])
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        first = (f"the model's {missing[0]} is not in the checkpoint" if missing else
                 f"the checkpoint's {unexpected[0]} is not in the model")
        raise RecipeError(recipe, [Problem(
            "model.checkpoint", f"{path} does not fit the model of [model]: {first} ({len(missing)} of the "
            f"model's {len(own)} tensors missing, {len(unexpected)} extra)",
            fix="build the model the checkpoint was saved from; a 'module.' prefix (DataParallel) or a wrapper's "
                "prefix must be stripped before saving")])
    model.load_state_dict(state, strict=True)


def torchvision_weights(name: str, weights: str, recipe: str):
    """torchvision's weights enum for ``model.options.weights`` (``"DEFAULT"`` or a name such as
    ``"IMAGENET1K_V1"``), if its file is in the local torch hub cache; else a ``RecipeError`` naming the
    file expected there. optcheck never downloads (CI machines often have no network)."""
    import torch
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(name)
        chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    except (KeyError, ValueError) as exc:
        names = [w.name for w in tvm.get_model_weights(name)] if name in tvm.list_models() else []
        raise RecipeError(recipe, [Problem("model.options.weights", f"torchvision's {name} has no weights {weights!r}"
                                           f" ({exc})", ", ".join(["DEFAULT", *names]), "name one of them")]) from None
    expected = Path(torch.hub.get_dir()) / "checkpoints" / Path(chosen.url).name
    if not expected.is_file():
        raise RecipeError(recipe, [Problem(
            "model.options.weights", f"torchvision's {name} weights {chosen.name} are not in the local torch hub "
            f"cache: expected {expected} (optcheck never downloads)",
            fix=f"download {chosen.url} to {expected} on a machine with network access (or set TORCH_HOME), "
                "or give model.checkpoint instead")])
    return chosen
