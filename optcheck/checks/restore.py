"""Save / restore round trips by engine (Model Optimizer, Torch-Pruning, state dict) and the
comparison of two models: architecture, state dict, ``modelopt_state``, eval outputs."""

from __future__ import annotations

from optcheck.checks.failure import fail

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any



# -- save / restore ------------------------------------------------------------------------------

def modelopt_modes(model: Any) -> list[str]:
    from optcheck.core.compat import import_modelopt

    _, mto, _ = import_modelopt()
    return [mode for mode, _ in mto.modelopt_state(model).get("modelopt_state_dict", [])]


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Where two nested structures (dicts, lists, tensors, scalars) first differ, or None."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and torch.equal(a.cpu(), b.cpu()))
        return None if same else path or "<root>"
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            extra = sorted(map(str, set(a) ^ set(b)))[:3]
            return f"{path or '<root>'} (keys differ: {', '.join(extra)})"
        for k in a:
            d = _first_difference(a[k], b[k], f"{path}.{k}" if path else str(k))
            if d:
                return d
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{path or '<root>'} (length {len(a)} vs {len(b)})"
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path or '<root>'} ({a!r} vs {b!r})"


def _architecture(model: Any) -> list[tuple[str, str, tuple]]:
    rows = [(n, type(m).__name__, ()) for n, m in model.named_modules()]
    rows += [(n, "param", tuple(p.shape)) for n, p in model.named_parameters()]
    return rows


def model_differences(expected: Any, actual: Any, *, example_input: Any, atol: float = 0.0,
                      rtol: float = 0.0) -> list[tuple[str, str]]:
    """Compare architecture, state dict, ``mto.modelopt_state`` and eval-mode outputs.

    Returns ``(aspect, description)`` rows for every aspect that differs; empty when they match.
    """
    import torch

    from optcheck.core.compat import import_modelopt

    _, mto, _ = import_modelopt()
    problems: list[tuple[str, str]] = []
    arch_a, arch_b = _architecture(expected), _architecture(actual)
    if arch_a != arch_b:
        diff = next(((a, b) for a, b in zip(arch_a, arch_b) if a != b), None)
        where = (f"{diff[0][0] or '<root>'}: {diff[0][1]}{list(diff[0][2]) or ''} vs "
                 f"{diff[1][0] or '<root>'}: {diff[1][1]}{list(diff[1][2]) or ''}" if diff
                 else f"{len(arch_a)} vs {len(arch_b)} modules/parameters")
        problems.append(("architecture", where))
    sd_a, sd_b = expected.state_dict(), actual.state_dict()
    if set(sd_a) != set(sd_b):
        only = sorted(set(sd_a) ^ set(sd_b))
        problems.append(("state_dict", f"keys differ: {len(only)} (e.g. {', '.join(only[:3])})"))
    else:
        bad, worst, worst_key = 0, 0.0, ""
        for k, ta in sd_a.items():
            tb = sd_b[k].to(ta.device)
            if ta.shape != tb.shape:
                bad += 1
                worst_key = worst_key or f"{k} shape {list(ta.shape)} vs {list(tb.shape)}"
                continue
            if ta.is_floating_point():
                close = torch.allclose(ta, tb, atol=atol, rtol=rtol) if (atol or rtol) else torch.equal(ta, tb)
                delta = (ta - tb).abs().max().item() if ta.numel() else 0.0
            else:
                close, delta = torch.equal(ta, tb), float(not torch.equal(ta, tb))
            if not close:
                bad += 1
                if delta >= worst:
                    worst, worst_key = delta, k
        if bad:
            problems.append(("state_dict", f"{bad} of {len(sd_a)} tensors differ; largest |diff| "
                                            f"{worst:.3g} at {worst_key} (atol={atol}, rtol={rtol})"))
    where = _first_difference(mto.modelopt_state(expected), mto.modelopt_state(actual))
    if where:
        problems.append(("modelopt_state", f"differs at {where}"))
    if not any(a == "architecture" for a, _ in problems):
        args = example_input if isinstance(example_input, tuple) else (example_input,)
        outs = []
        for m in (expected, actual):
            was = m.training
            m.eval()
            with torch.no_grad():
                outs.append(m(*args))
            m.train(was)
        out_b = outs[1].to(outs[0].device)
        same = torch.allclose(outs[0], out_b, atol=atol, rtol=rtol) if (atol or rtol) else torch.equal(outs[0], out_b)
        if not same:
            problems.append(("outputs", f"eval-mode outputs differ: max |diff| "
                                        f"{(outs[0] - out_b).abs().max().item():.3g} (atol={atol}, rtol={rtol})"))
    return problems


def _roundtrip_hint(problems: list[tuple[str, str]], expected_modes: list[str],
                    actual_modes: list[str]) -> str:
    aspects = {a for a, _ in problems}
    if expected_modes and actual_modes != expected_modes:
        return (f"Model Optimizer converted this model ({', '.join(expected_modes)}): restore it with "
                "mto.restore, not load_state_dict; a plain state dict cannot rebuild what the modes changed")
    if "architecture" in aspects:
        return "make_model() must build the same model that was compressed, before any compression"
    if aspects == {"outputs"}:
        return "weights match but outputs do not: look for state kept outside the state dict"
    return ("the weights changed between save and restore: look for code that touches the model "
            "after mto.restore (re-initialisation, a second load, training in eval checks)")


def assert_same_model(expected: Any, actual: Any, *, example_input: Any, atol: float = 0.0,
                      rtol: float = 0.0, budget: str = "restore_roundtrip") -> None:
    """Fail unless ``actual`` reproduces ``expected``: architecture, state dict, modelopt_state and
    eval-mode outputs (exact by default)."""
    __tracebackhide__ = True
    problems = model_differences(expected, actual, example_input=example_input, atol=atol, rtol=rtol)
    if problems:
        fail(budget, problems, _roundtrip_hint(problems, modelopt_modes(expected), modelopt_modes(actual)))


def mto_restore(model: Any, path: str | Path) -> Any:
    from optcheck.core.compat import import_modelopt

    _, mto, _ = import_modelopt()
    return mto.restore(model, path)


def _mto_save(model: Any, path: Path) -> None:
    from optcheck.core.compat import import_modelopt

    _, mto, _ = import_modelopt()
    mto.save(model, path)


def _tp_save(model: Any, path: Path) -> None:
    import torch
    import torch_pruning as tp

    torch.save(tp.state_dict(model), path)


def _tp_restore(fresh: Any, path: Path) -> Any:
    # a pickle (tp.state_dict keeps the pruned layers' attributes): this process wrote it just now
    import torch
    import torch_pruning as tp

    return tp.load_state_dict(fresh, state_dict=torch.load(path, map_location="cpu", weights_only=False))


def _sd_save(model: Any, path: Path) -> None:
    import torch

    torch.save(model.state_dict(), path)


def _sd_restore(fresh: Any, path: Path) -> Any:
    import torch

    fresh.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return fresh


# engine -> (save(model, path), restore(fresh_model, path) -> model)
ENGINES: dict[str, tuple[Callable[[Any, Path], None], Callable[[Any, Path], Any]]] = {
    "modelopt": (_mto_save, mto_restore),
    "torch_pruning": (_tp_save, _tp_restore),
    "state_dict": (_sd_save, _sd_restore),
}


def shapes(model: Any) -> dict[str, tuple]:
    """The shape of every tensor of the model's state dict: its architecture, as a restore sees it."""
    return {name: tuple(t.shape) for name, t in model.state_dict().items() if hasattr(t, "shape")}


def pick_engine(model: Any, fresh: Any) -> str:
    """``modelopt`` for a model Model Optimizer converted, or whose architecture is a fresh model's;
    ``torch_pruning`` for one whose layer shapes changed outside Model Optimizer (a Torch-Pruning
    subnet: only ``tp.state_dict`` rebuilds it)."""
    if modelopt_modes(model):
        return "modelopt"
    return "torch_pruning" if shapes(model) != shapes(fresh) else "modelopt"


def assert_restore_roundtrip(model: Any, make_model: Callable[[], Any], *, example_input: Any,
                             atol: float = 0.0, rtol: float = 0.0,
                             restore: Callable[[Any, Path], Any] | None = None,
                             engine: str = "auto") -> Any:
    """Save ``model``, restore it into ``make_model()`` and compare the two.

    ``engine`` is how a checkpoint of this model is saved and restored: ``modelopt`` (``mto.save`` /
    ``mto.restore``), ``torch_pruning`` (``tp.state_dict`` / ``tp.load_state_dict``), ``state_dict``
    (``torch.save(model.state_dict())`` / ``load_state_dict``), or ``auto`` (``pick_engine``: Model
    Optimizer's unless the layer shapes differ from ``make_model()``'s without Model Optimizer having
    converted the model). Compares the architecture (module types and parameter shapes), the state
    dict, ``mto.modelopt_state`` and eval-mode outputs on ``example_input`` (exact unless ``atol`` /
    ``rtol``). ``restore(fresh_model, path)`` replaces the engine's restore (to test your own restore
    code). Returns the restored model.
    """
    __tracebackhide__ = True
    if engine not in ("auto", *ENGINES):
        raise ValueError(f"engine={engine!r}: use auto, {', '.join(ENGINES)}")
    fresh = make_model()
    if engine == "auto":
        engine = pick_engine(model, fresh)
    save, default_restore = ENGINES[engine]
    with tempfile.TemporaryDirectory(prefix="optcheck-roundtrip-") as tmp:
        path = Path(tmp) / "model.pth"
        save(model, path)
        try:
            restored = (restore or default_restore)(fresh, path)
        except Exception as exc:  # noqa: BLE001 - any failure to restore is the finding
            modes = modelopt_modes(model)
            detail = " ".join(line.strip() for line in str(exc).splitlines()[:2])[:400]
            hint = (_roundtrip_hint([("architecture", "")], modes, []) if modes else
                    "make_model() must build the same model that was saved"
                    + ("; a Torch-Pruning subnet restores with engine='torch_pruning' (tp.load_state_dict)"
                       if engine != "torch_pruning" and "size mismatch" in str(exc) else ""))
            fail("restore_roundtrip", [("restore", f"{engine} restore raised {type(exc).__name__}: {detail}")],
                  hint)
    device = next((p.device for p in model.parameters()), None)
    if device is not None:
        restored = restored.to(device)
    assert_same_model(model, restored, example_input=example_input, atol=atol, rtol=rtol)
    return restored
