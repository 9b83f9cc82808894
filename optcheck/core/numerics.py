"""The numerics fingerprint of this process: what decides the last bits of a CPU (or GPU) result.

Two machines that agree on this fingerprint run the same kernels and get bit-identical artifacts
for the same recipe and seed; two that differ may not. It goes into the artifact cache's keys (a
cache hit must equal what a cold build here would produce) and into every ledger entry
(``written_by``), so a ledger failure can say "written on AVX512 with 1 thread, checked on AVX2
with 2 threads" instead of leaving the reader to guess.

What decides CPU numerics, measured on this project's machines:
- the ATen kernel set (``torch.backends.cpu.get_cpu_capability()``: DEFAULT / AVX2 / AVX512 ...),
  which ``ATEN_CPU_CAPABILITY`` can lower;
- oneDNN's instruction set (convolutions), which ``ONEDNN_MAX_CPU_ISA`` can lower, else picked from
  the CPU's flags (AVX-512, VNNI, AMX ...);
- the intra-op thread count (reductions are split per thread);
- the library versions.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from functools import lru_cache
import contextlib

# CPU flags that change which kernels torch / oneDNN pick (present or absent).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")
ENV_KNOBS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR")


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = frozenset(value.split())
                if flags and key == "model name":
                    break
    except OSError:
        pass
    return model, flags


def cpu_model() -> str:
    return _cpuinfo()[0]


def cpu_isa() -> str:
    """The kernel-relevant CPU flags this machine has, e.g. ``avx2+avx512f+avx512_vnni+fma``."""
    flags = _cpuinfo()[1]
    return "+".join(f for f in ISA_FLAGS if f in flags) or "unknown"


def dist_version(dist: str, missing: str | None = "absent") -> str | None:
    """The installed version of distribution ``dist``, or ``missing`` (keys, fingerprints, reports)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return missing


def knobs() -> dict[str, str]:
    """The environment variables set in this process that lower or pin the kernels."""
    return {k: os.environ[k] for k in ENV_KNOBS if os.environ.get(k)}


def fingerprint(device=None) -> dict[str, object]:
    """This process's numerics, as plain data. ``device``: a ``torch.device`` (default: cpu)."""
    import torch

    out: dict[str, object] = {}
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        out["cuda"] = torch.version.cuda or "?"
    out.update({
        "cpu": cpu_model(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "isa": cpu_isa(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "modelopt": dist_version("nvidia-modelopt"),
    })
    knob = knobs()
    if knob:
        out["env"] = " ".join(f"{k}={v}" for k, v in sorted(knob.items()))
    return out


def key_material(device) -> dict[str, str]:
    """The part of the fingerprint that decides an artifact's bits (for cache keys): kernels, ISA
    and knobs; the CPU's marketing name is left out (two CPUs with one ISA run the same kernels)."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return {}
    return {"capability": torch.backends.cpu.get_cpu_capability(), "isa": cpu_isa(),
            **{k.lower(): v for k, v in knobs().items()}}


def describe(fp: dict | None) -> str:
    """One line: ``Intel Xeon ... | AVX512 (avx2+avx512f+...) | 1 thread | torch 2.15.0, modelopt 0.47.0``."""
    if not fp:
        return "unknown (the entry predates numerics fingerprints)"
    threads = fp.get("threads")
    parts = [str(fp.get("gpu") or fp.get("cpu", "?")),
             f"{fp.get('capability', '?')} ({fp.get('isa', '?')})",
             f"{threads} thread{'s' if threads != 1 else ''}",
             f"torch {fp.get('torch', '?')}, modelopt {fp.get('modelopt', '?')}"]
    if fp.get("env"):
        parts.append(str(fp["env"]))
    return " | ".join(parts)


def differences(a: dict | None, b: dict | None) -> list[str]:
    """The fingerprint fields that differ between ``a`` (the ledger's) and ``b`` (this run's)."""
    if not a or not b:
        return []
    keys = ("gpu", "cpu", "capability", "isa", "threads", "torch", "modelopt", "env")
    return [k for k in keys if str(a.get(k, "")) != str(b.get(k, ""))]


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op thread count set to ``threads`` inside (unchanged for None), restored after."""
    if not threads:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
