"""Golden checkpoints: a stage's model as a team deployed it, committed beside the recipe, with the
outputs it gave on a fixed batch and the versions that wrote it. Today's stack must still restore it
and reproduce those outputs (``ledger.golden`` judges; this module reads, writes and restores).

    <recipe folder>/golden/<recipe name>/<stage>/
        golden.json            who wrote it (versions, numerics), the checkpoint kind, the tolerance and
                               how it was measured, each file's sha256
        weights.safetensors    the state dict (Model Optimizer's quantizer scales included)
        modelopt_state.pt      Model Optimizer's modes and their configs (``mto.modelopt_state``), when
                               the stage is a Model Optimizer model; a dict of plain values and dtypes
                               that ``torch.load(weights_only=True)`` reads
        torch_pruning.pth      Torch-Pruning's ``tp.state_dict``, when the stage descends from a
                               Torch-Pruning subnet: a pickle of the pruned modules' internals (their
                               ``__dict__``), which is Torch-Pruning's format; it is kept as written and
                               loaded only after its sha256 matched golden.json
        outputs.safetensors    ``inputs`` (the first test images of the recipe's split) and ``logits``

Every other tensor is in safetensors, and ``modelopt_state.pt`` loads with ``weights_only=True``.
Restoring reassembles the checkpoint each kind
restores from (``mto.save``'s layout, ``tp.state_dict``'s) in a temporary folder and goes through the
pipeline's own loader (``checkpoints.load_model``), so a golden checkpoint exercises the restore path
the stage's checkpoint does: ``mto.restore`` for a Model Optimizer stage.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from optcheck.core.errors import OptcheckError

FOLDER = "golden"
META = "golden.json"
INPUTS = 64  # test images in the fixed batch: enough to flip a top-1 somewhere, small to commit


class GoldenError(OptcheckError):
    """A golden checkpoint that cannot be read: a missing or edited file, a bad golden.json."""


class GoldenMissing(GoldenError):
    """The recipe lists a golden stage whose folder holds no golden.json yet."""


@dataclass
class Golden:
    folder: Path
    meta: dict[str, Any]

    @property
    def tolerance(self) -> float:
        """Of the largest absolute logit difference."""
        return float(self.meta["tolerance"])

    @property
    def mean_tolerance(self) -> float:
        """Of the mean absolute logit difference (a golden written without one: the largest's)."""
        return float(self.meta.get("mean_tolerance", self.meta["tolerance"]))

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.folder / name))


def folder_for(recipe, stage: str) -> Path:
    """Where a recipe's golden checkpoint of ``stage`` lives: beside the recipe file."""
    return Path(recipe.path).parent / FOLDER / recipe.name / stage


def fixed_inputs(ctx, n: int = INPUTS) -> torch.Tensor:
    """The first ``n`` test images of the recipe's split, in loader order (no augmentation)."""
    parts, have = [], 0
    for x, _ in ctx.test_loader:
        parts.append(x)
        have += len(x)
        if have >= n:
            break
    return torch.cat(parts)[:n].cpu().contiguous()


def logits(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The model's eval-mode outputs on ``inputs`` (its train / eval mode restored after)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(inputs.to(device)).float().cpu().contiguous()
    finally:
        model.train(was_training)


# -- writing -------------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write(folder: Path, files: dict[str, Path], checkpoint: str, inputs: torch.Tensor, outputs: torch.Tensor,
          meta: dict[str, Any]) -> Golden:
    """Write a stage's golden checkpoint from its checkpoint ``files`` (``Artifact.files``; ``checkpoint``
    names the one that restores it). Replaces what ``folder`` held; returns what was written."""
    import shutil

    from safetensors.torch import save_file

    tmp = folder.with_name(f".{folder.name}.writing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    kinds: dict[str, str] = {}
    for name, path in files.items():
        if name == "modelopt" and name == checkpoint:
            saved = torch.load(path, map_location="cpu", weights_only=True)  # mto.save's dict: tensors, plain values
            save_file(_tensors(saved["model_state_dict"]), str(tmp / "weights.safetensors"))
            torch.save(saved["modelopt_state"], tmp / "modelopt_state.pt")
            kinds[name] = "modelopt"
        elif name == "state_dict" and name == checkpoint:
            save_file(_tensors(torch.load(path, map_location="cpu", weights_only=True)), str(tmp / "weights.safetensors"))
            kinds[name] = "state_dict"
        elif name == "torch_pruning":  # Torch-Pruning's own file, as it writes it (see the module's docstring)
            shutil.copyfile(path, tmp / "torch_pruning.pth")
            kinds[name] = "torch_pruning"
    if checkpoint not in kinds:
        raise GoldenError(f"a golden checkpoint keeps Model Optimizer, state-dict and Torch-Pruning checkpoints; "
                          f"this stage restores from {checkpoint!r}")
    save_file({"inputs": inputs.contiguous(), "logits": outputs.contiguous()}, str(tmp / "outputs.safetensors"))
    body = {**meta, "checkpoint": checkpoint, "files": kinds,
            "sha256": {p.name: _sha256(p) for p in sorted(tmp.iterdir())}}
    (tmp / META).write_text(json.dumps(body, indent=1, sort_keys=False) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return read(folder)


def _tensors(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A state dict as safetensors takes it: tensors only, contiguous, no shared storage."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}


def update_meta(golden: Golden, **fields: Any) -> Golden:
    """Rewrite golden.json with ``fields`` changed (the files and their checksums stay)."""
    body = {**golden.meta, **fields}
    (golden.folder / META).write_text(json.dumps(body, indent=1) + "\n")
    return Golden(golden.folder, body)


# -- reading and restoring -----------------------------------------------------------------------------

def read(folder: Path, display=str) -> Golden:
    """The golden checkpoint in ``folder``, every file checked against its sha256. ``GoldenError``
    names the file (as ``display`` shows a path) and the fix."""
    meta_path = folder / META
    fix = ("restore the folder from version control, or write it again with `pytest --optcheck "
           "--optcheck-update-all` (review the diff before committing)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GoldenMissing(f"{display(meta_path)}: no golden checkpoint here yet (the recipe lists the stage "
                            "under golden); write it with `pytest --optcheck --optcheck-update`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GoldenError(f"{display(meta_path)}: cannot be read ({exc}); fix: {fix}") from None
    for key in ("sha256", "checkpoint", "files", "tolerance", "written_by"):
        if not isinstance(meta, dict) or key not in meta:
            raise GoldenError(f"{display(meta_path)}: has no {key!r}; fix: {fix}")
    for name, digest in meta["sha256"].items():
        path = folder / name
        if not path.exists():
            raise GoldenError(f"{display(path)}: missing (golden.json lists it); fix: {fix}")
        if _sha256(path) != digest:
            raise GoldenError(f"{display(path)}: its sha256 is not the one golden.json records (the file was "
                              f"edited or damaged after it was written); fix: {fix}")
    return Golden(folder, meta)


def restore(golden: Golden, ctx, stage) -> torch.nn.Module:
    """The golden model, restored by today's stack: the stage's checkpoint reassembled in a temporary
    folder and loaded by ``checkpoints.load_model`` (``mto.restore`` for a Model Optimizer stage)."""
    from optcheck.pipeline.checkpoints import load_model

    with tempfile.TemporaryDirectory(prefix="optcheck-golden-") as tmp:
        files: dict[str, Path] = {}
        for name, kind in golden.meta["files"].items():
            path = Path(tmp) / f"{name}.pth"
            if kind == "modelopt":
                state = torch.load(golden.folder / "modelopt_state.pt", map_location="cpu", weights_only=True)
                torch.save({"modelopt_state": state, "model_state_dict": golden.tensors("weights.safetensors")}, path)
            elif kind == "state_dict":
                torch.save(golden.tensors("weights.safetensors"), path)
            elif kind == "torch_pruning":
                path = golden.folder / "torch_pruning.pth"  # checksummed by read()
            files[name] = path
        return load_model(ctx, stage, files)
