"""Latency as a ratio measured in one run: a compressed model's against its baseline's, interleaved.

Absolute times mean nothing across machines (and CI runners differ run to run); the ratio of two
models timed side by side in the same process, on the same input, at the same thread count, mostly
does not: load that slows one slows the other. So each round times both models, one call each, in
alternating order (reference first on even rounds, candidate first on odd ones, so neither always
runs on the other's warm caches), after warm-up rounds that are thrown away. The ratio is the median
of the per-round ratios (candidate / reference; < 1 is faster), with a distribution-free interval
for that median (order statistics of the rounds: ``stats.median_interval``).

pytest-benchmark is the timing engine: its timer (``--benchmark-timer``), its ``--benchmark-disable-gc``
and ``--benchmark-min-rounds``, its statistics (each model's series is a ``pytest_benchmark`` Stats),
and its session: both series land in its terminal table and in ``--benchmark-json`` /
``--benchmark-save`` as two benchmarks of one group, the ratio and its interval in their
``extra_info``. Under pytest-xdist pytest-benchmark switches itself off ("cannot be performed
reliably in a parallelized environment"); a latency check then still measures, with the same timer
and loop, and says so (``engine``: other workers share the CPU; the interleaving makes both models
pay for it), rather than measuring nothing. Only an explicit ``--benchmark-disable`` (or
``--benchmark-skip``) turns the check off, as a skip with its reason.

Runtimes: ``torch`` (the model in eval mode under ``torch.inference_mode``) and ``onnxruntime`` (the
model exported with ``onnx_parity.export``, run by an InferenceSession on the CPU provider with the
same thread count).
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RUNTIMES = ("torch", "onnxruntime")
ENGINE_BENCHMARK = "pytest-benchmark"
ENGINE_XDIST = "optcheck under pytest-xdist (pytest-benchmark is off there)"
ENGINE_PLAIN = "optcheck (no pytest-benchmark session)"


class LatencyOff(Exception):
    """The user switched timing off (``--benchmark-disable``): the check cannot judge, and says so."""


@dataclass(frozen=True)
class Settings:
    """How latency is measured (a recipe's ``[latency]`` table)."""

    runtime: str = "torch"
    batch_size: int = 1
    threads: int = 1
    rounds: int = 200
    warmup_rounds: int = 20
    confidence: float = 0.95


@dataclass(frozen=True)
class Latency:
    """What one interleaved measurement found. Times in seconds per call."""

    ratio: float  # candidate / reference: the median of the per-round ratios
    low: float  # the interval of that median
    high: float
    reference_median: float
    candidate_median: float
    rounds: int
    warmup_rounds: int
    runtime: str
    batch_size: int
    threads: int
    confidence: float
    engine: str
    reference_iqr: float = 0.0
    candidate_iqr: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    # both timed series (reference, candidate): for pytest-benchmark's table and JSON, not for reports
    times: tuple[list[float], list[float]] | None = field(default=None, repr=False, compare=False)

    @property
    def speedup(self) -> float:
        return 1.0 / self.ratio

    @property
    def speedup_interval(self) -> tuple[float, float]:
        return 1.0 / self.high, 1.0 / self.low

    def describe(self) -> str:
        """One line: both medians, the ratio and speed-up with their interval, and how it was measured."""
        lo, hi = self.speedup_interval
        return (f"{self.runtime} batch {self.batch_size}, {self.threads} thread(s): candidate "
                f"{_ms(self.candidate_median)} vs baseline {_ms(self.reference_median)} (medians of {self.rounds} "
                f"interleaved rounds); ratio {self.ratio:.3f} [{self.low:.3f}, {self.high:.3f}], speed-up "
                f"{self.speedup:.2f}x [{lo:.2f}, {hi:.2f}] ({self.confidence:.0%} interval); timed by {self.engine}")

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra")
        out.pop("times")
        out.update(self.extra, speedup=self.speedup, speedup_low=self.speedup_interval[0],
                   speedup_high=self.speedup_interval[1])
        return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


# ---------------------------------------------------------------- runners: one call of a model

def torch_runner(model, example) -> Callable[[], Any]:
    """One eval-mode forward of ``model`` on ``example`` (moved to the model's device)."""
    import torch

    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = example.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def call():
        with torch.inference_mode():
            out = model(x)
        sync()
        return out

    return call


def onnxruntime_runner(model, example, path: Path, threads: int) -> Callable[[], Any]:
    """One onnxruntime run of ``model`` exported to ``path`` (``onnx_parity.export``), on the CPU
    provider with ``threads`` intra-op threads and sequential execution."""
    import onnxruntime as ort

    from optcheck.checks.onnx_parity import export

    export(model, example[:1], path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: example.cpu().numpy()}
    return lambda: session.run(None, feed)


def runners(reference, candidate, example, settings: Settings, workdir: Path | None = None):
    """The two calls to time, on ``settings.runtime``."""
    if settings.runtime == "torch":
        return torch_runner(reference, example), torch_runner(candidate, example)
    if settings.runtime == "onnxruntime":
        import tempfile

        where = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="optcheck-latency-"))
        where.mkdir(parents=True, exist_ok=True)
        return (onnxruntime_runner(reference, example, where / "latency-reference.onnx", settings.threads),
                onnxruntime_runner(candidate, example, where / "latency-candidate.onnx", settings.threads))
    raise ValueError(f"unknown latency runtime {settings.runtime!r}; allowed: {', '.join(RUNTIMES)}")


def batch_of(example, batch_size: int):
    """``example`` (a batch of inputs) cut or tiled to exactly ``batch_size`` samples."""
    if len(example) >= batch_size:
        return example[:batch_size].contiguous()
    reps = math.ceil(batch_size / len(example))
    return example.repeat(reps, *([1] * (example.dim() - 1)))[:batch_size].contiguous()


# ---------------------------------------------------------------- the interleaved loop

def interleave(reference: Callable[[], Any], candidate: Callable[[], Any], *, rounds: int, warmup_rounds: int,
               timer: Callable[[], float] = time.perf_counter, disable_gc: bool = False
               ) -> tuple[list[float], list[float]]:
    """Time one call of each per round, alternating which goes first; returns both series (seconds)."""
    if rounds < 3:
        raise ValueError(f"rounds must be >= 3 for a median and its interval, got {rounds}")
    ref_times: list[float] = []
    cand_times: list[float] = []
    gc_was = gc.isenabled()
    if disable_gc:
        gc.disable()
    try:
        for i in range(warmup_rounds + rounds):
            pair = ((reference, ref_times), (candidate, cand_times))
            for fn, out in (pair if i % 2 == 0 else pair[::-1]):
                start = timer()
                fn()
                took = timer() - start
                if i >= warmup_rounds:
                    out.append(took)
    finally:
        if gc_was:
            gc.enable()
    return ref_times, cand_times


def summarize(ref_times: list[float], cand_times: list[float], settings: Settings, engine: str) -> Latency:
    """Both series to a ``Latency``: medians, the per-round ratio's median and its interval."""
    import statistics

    from optcheck.core.stats import median_interval

    ratios = [c / r for r, c in zip(ref_times, cand_times) if r > 0]
    if len(ratios) < 3:
        raise ValueError("fewer than 3 rounds with a non-zero reference time: the timer is too coarse")
    ratio = statistics.median(ratios)
    low, high = median_interval(ratios, settings.confidence)
    return Latency(ratio=ratio, low=low, high=high, reference_median=statistics.median(ref_times),
                   candidate_median=statistics.median(cand_times), rounds=len(ratios),
                   warmup_rounds=settings.warmup_rounds, runtime=settings.runtime, batch_size=settings.batch_size,
                   threads=settings.threads, confidence=settings.confidence, engine=engine,
                   reference_iqr=_iqr(ref_times), candidate_iqr=_iqr(cand_times),
                   times=(list(ref_times), list(cand_times)))


def _iqr(values: list[float]) -> float:
    import statistics

    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


# ---------------------------------------------------------------- pytest-benchmark as the engine

def engine_of(benchmark) -> tuple[str, Callable[[], float], bool]:
    """How to time, given a pytest-benchmark fixture (or None): ``(engine, timer, disable_gc)``.

    Raises ``LatencyOff`` when the user disabled benchmarks: pytest-benchmark's own fixture then runs
    a benchmarked function once, untimed; a latency verdict cannot come from that."""
    from optcheck.core.private_api import fixture_timer

    if benchmark is None:
        return ENGINE_PLAIN, time.perf_counter, False
    timer, disable_gc = fixture_timer(benchmark)
    if not benchmark.disabled:
        return ENGINE_BENCHMARK, timer, disable_gc
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return f"{ENGINE_XDIST}, worker {os.environ['PYTEST_XDIST_WORKER']}", timer, disable_gc
    raise LatencyOff("latency not measured: benchmarks are disabled (--benchmark-disable); drop the option "
                     "(or add --benchmark-enable) to measure and judge it")


class _Series:
    """What pytest-benchmark's ``Metadata`` reads from a fixture: one series' name and extra info."""

    def __init__(self, name: str, fullname: str, role: str, extra_info: dict[str, Any]):
        self.name = f"{name}[{role}]"
        self.fullname = f"{fullname}[{role}]"
        self.group = f"optcheck latency: {fullname}"
        self.param, self.params = role, {"model": role}
        self.extra_info = extra_info
        self.cprofile_stats = None
        self.has_error = False


def series(name: str, fullname: str, ref_times: list[float], cand_times: list[float], latency: Latency,
           roles: tuple[str, str] = ("baseline", "candidate")) -> dict[str, Any]:
    """Both timed series and the ratio, as plain data: what pytest-benchmark's table and JSON show
    (``to_benchmark``); under xdist a worker sends it to the controller in its report."""
    return {"name": name, "fullname": fullname, "roles": list(roles), "times": [list(ref_times), list(cand_times)],
            "latency": latency.as_dict()}


def to_benchmark(add: Callable[[Any], None], data: dict[str, Any], timer: Any = None, disable_gc: bool = False) -> None:
    """Both series of ``data`` (``series``) into pytest-benchmark (``add``: a fixture's or a session's
    way to keep a ``Metadata``), one group per check, the ratio and its interval in each one's
    ``extra_info`` (with the engine, when it was not pytest-benchmark's own fixture)."""
    from pytest_benchmark.stats import Metadata

    latency = data["latency"]
    info = {f"optcheck_{k}": v for k, v in latency.items() if k != "engine" or v != ENGINE_BENCHMARK}
    options = {"disable_gc": disable_gc, "timer": timer or time.perf_counter, "min_rounds": latency["rounds"],
               "max_time": 0, "min_time": 0, "precision": None, "confidence": latency["confidence"],
               "warmup": latency["warmup_rounds"]}
    for role, times in zip(data["roles"], data["times"]):
        meta = Metadata(_Series(data["name"], data["fullname"], role, {**info, "optcheck_role": role}), iterations=1,
                        options=options)
        for t in times:
            meta.update(t)
        add(meta)


def record(benchmark, ref_times: list[float], cand_times: list[float], latency: Latency,
           roles: tuple[str, str] = ("baseline", "candidate")) -> None:
    """Both series into the fixture's pytest-benchmark session (terminal table, ``--benchmark-json``,
    ``--benchmark-save``)."""
    from optcheck.core.private_api import add_stats, fixture_timer

    timer, disable_gc = fixture_timer(benchmark)
    to_benchmark(lambda meta: add_stats(benchmark, meta),
                 series(benchmark.name, benchmark.fullname, ref_times, cand_times, latency, roles), timer, disable_gc)


def measure(reference, candidate, example, settings: Settings = Settings(), *, benchmark=None,
            workdir: Path | None = None, roles: tuple[str, str] = ("baseline", "candidate")) -> Latency:
    """Time ``candidate`` against ``reference`` (models) on ``example`` cut to ``settings.batch_size``,
    interleaved, on ``settings.runtime`` with ``settings.threads`` threads; with ``benchmark`` (the
    pytest-benchmark fixture, or one built for a recipe item), through pytest-benchmark."""
    engine, timer, disable_gc = engine_of(benchmark)
    if benchmark is not None:
        from optcheck.core.private_api import fixture_min_rounds

        rounds = max(settings.rounds, fixture_min_rounds(benchmark))
        settings = Settings(**{**asdict(settings), "rounds": rounds})
    x = batch_of(example, settings.batch_size)
    from optcheck.core.numerics import torch_threads

    with torch_threads(settings.threads):
        ref_call, cand_call = runners(reference, candidate, x, settings, workdir)
        ref_times, cand_times = interleave(ref_call, cand_call, rounds=settings.rounds,
                                           warmup_rounds=settings.warmup_rounds, timer=timer, disable_gc=disable_gc)
    latency = summarize(ref_times, cand_times, settings, engine)
    if engine == ENGINE_BENCHMARK:
        record(benchmark, ref_times, cand_times, latency, roles)
    return latency
