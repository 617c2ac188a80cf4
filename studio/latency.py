"""Timed runs: PyTorch eager and ONNX Runtime, CPU and (when truly in use) CUDA.

Each measurement warms up, then repeats within a time budget (bounded iterations) and reports
p50 / p90 / p99 with the iteration count, threads, batch size and sequence length. PyTorch and ORT
use the same intra-op thread count. Everything is measured at the sample's batch and again at batch 1.
CUDA numbers are produced only by sessions whose `get_providers()` shows CUDA (ORT with IO binding:
inputs copied to the device once, outputs left there; PyTorch with `torch.cuda.synchronize()` inside
the timed call); otherwise the reason is recorded instead. The machine's load average is recorded
beside the numbers: on a busy machine every timing is pessimistic.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import runtime
from .report import LatencyInfo, Timing
from .sources.base import LoadedModel

WARMUP = 3  # untimed calls first (fewer when one call already takes the whole budget)
MIN_WARMUP = 1
MIN_ITERS = 5
MAX_ITERS = 2000
KEYS = ("torch_cpu", "ort_cpu", "ort_cuda", "torch_cuda")


def _timed(fn: Callable[[], object], budget_s: float, warmup: int = WARMUP, min_iters: int = MIN_ITERS,
           max_iters: int = MAX_ITERS) -> tuple[float, float, float, int, int]:
    """(p50_ms, p90_ms, p99_ms, iterations, warm-up calls)."""
    warm, start = 0, time.perf_counter()
    while warm < warmup:
        fn()
        warm += 1
        if warm >= MIN_WARMUP and time.perf_counter() - start >= budget_s:
            break  # a slow call: the budget is better spent on timed iterations
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < max_iters and (len(samples) < min_iters or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    p50, p90, p99 = np.percentile(samples, [50, 90, 99])
    return float(p50), float(p90), float(p99), len(samples), warm


def time_fn(fn: Callable[[], object], budget_s: float, warmup: int = WARMUP,
            min_iters: int = MIN_ITERS, max_iters: int = MAX_ITERS) -> tuple[float, float, float, int]:
    """Call fn up to `warmup` times, then until `budget_s` is spent (at least min_iters, at most max_iters).

    Returns (p50_ms, p90_ms, p99_ms, iterations)."""
    return _timed(fn, budget_s, warmup, min_iters, max_iters)[:4]


def _timing(stats, batch: int, seq: int | None, threads: int | None, provider: str,
            io_binding: bool = False) -> Timing:
    p50, p90, p99, n, warm = stats
    return Timing(round(p50, 3), round(p90, 3), round(p99, 3), n, batch, seq, threads, provider,
                  warmup=warm, io_binding=io_binding)


def _shape(tensors: dict[str, Any]) -> tuple[int, int | None]:
    first = next(iter(tensors.values()))
    seq = next((t.shape[1] for t in tensors.values()
                if t.ndim >= 2 and str(t.dtype).replace("torch.", "") in ("int64", "int32")), None)
    return int(first.shape[0]), (int(seq) if seq is not None else None)


def machine() -> dict[str, Any]:
    """CPU model, logical CPUs and the 1-minute load average now."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        load = round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        load = None
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "load_avg": load}


# --- single measurements -------------------------------------------------------------------------

def torch_cpu(loaded: LoadedModel, tensors: dict[str, torch.Tensor], threads: int, budget_s: float) -> Timing:
    batch, seq = _shape(tensors)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            stats = _timed(lambda: loaded.adapter(loaded.module, tensors), budget_s)
    finally:
        torch.set_num_threads(previous)
    return _timing(stats, batch, seq, threads, "torch-cpu")


def ort_cpu(path: Path, tensors: dict[str, np.ndarray], threads: int, budget_s: float, batch: int,
            seq: int | None, session=None) -> Timing:
    sess = session or runtime.cpu_session(path, threads)
    feeds = runtime.feeds(sess, tensors)
    stats = _timed(lambda: sess.run(None, feeds), budget_s)
    return _timing(stats, batch, seq, threads, sess.get_providers()[0])


def ort_cuda(sess, tensors: dict[str, np.ndarray], budget_s: float, batch: int, seq: int | None) -> Timing:
    """ORT on CUDA with IO binding, as in ONNX Runtime's docs: inputs copied to the device once
    (OrtValue on "cuda"), outputs bound to the device and left there, so the timed call is the
    model alone. `synchronize_outputs()` waits for the device before the clock stops."""
    if sess.get_providers()[0] != runtime.CUDA:
        raise RuntimeError(f"the session runs on {sess.get_providers()[0]}, not CUDA")
    import onnxruntime as ort
    binding = sess.io_binding()
    keep = []  # the OrtValues must outlive the binding
    for name, arr in runtime.feeds(sess, tensors).items():
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), "cuda", 0)
        keep.append(value)
        binding.bind_ortvalue_input(name, value)
    for out in sess.get_outputs():
        binding.bind_output(out.name, "cuda", 0)

    def step():
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
    stats = _timed(step, budget_s)
    return _timing(stats, batch, seq, None, sess.get_providers()[0], io_binding=True)


def torch_cuda(loaded: LoadedModel, tensors: dict[str, torch.Tensor], budget_s: float) -> Timing:
    """PyTorch eager on the GPU; inputs moved once, `torch.cuda.synchronize()` inside each timed call."""
    batch, seq = _shape(tensors)
    module = loaded.module.to("cuda")
    try:
        on_dev = {n: t.to("cuda") for n, t in tensors.items()}

        def step():
            loaded.adapter(module, on_dev)
            torch.cuda.synchronize()
        with torch.inference_mode():
            stats = _timed(step, budget_s)
    finally:
        loaded.module.to("cpu")
        torch.cuda.empty_cache()
    return _timing(stats, batch, seq, None, f"torch-cuda ({torch.cuda.get_device_name(0)})")


def _error(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"


def _batch1(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The sample's first row alone (None when the sample already has one row)."""
    batch, _ = _shape(tensors)
    if batch <= 1:
        return None
    return {n: t[:1].contiguous() for n, t in tensors.items()}


def _sizes(tensors: dict[str, torch.Tensor]) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """(tag, tensors) for the sample's batch ("") and, when it differs, batch 1 ("b1")."""
    b1 = _batch1(tensors)
    return [("", tensors)] + ([("b1", b1)] if b1 is not None else [])


# --- full measurements ---------------------------------------------------------------------------

def measure(loaded: LoadedModel, path: Path, tensors: dict[str, torch.Tensor], *, threads: int | None = None,
            budget_s: float = 1.0, cuda: bool = True) -> LatencyInfo:
    """All four measurements the device allows, at the sample's batch and at batch 1; an unavailable
    one records why, never a number. PyTorch CPU runs first, then ONNX Runtime (`measure_onnx`), so
    their working memory never stacks up; PyTorch CUDA last."""
    threads = threads or runtime.default_threads()
    started, before = time.perf_counter(), machine()
    info = LatencyInfo(threads=threads, budget_s=budget_s)
    sizes = _sizes(tensors)
    for tag, ts in sizes:
        _record(info, "torch_cpu", tag, lambda: torch_cpu(loaded, ts, threads, budget_s))
    runtime.release_memory()
    ort = measure_onnx(path, tensors, threads=threads, budget_s=budget_s, cuda=cuda)
    info.ort_cpu, info.ort_cuda = ort.ort_cpu, ort.ort_cuda
    info.batch1.update(ort.batch1)
    info.errors.update(ort.errors)
    info.cuda_unavailable_reason = ort.cuda_unavailable_reason
    if cuda and torch.cuda.is_available():
        for tag, ts in sizes:
            _record(info, "torch_cuda", tag, lambda: torch_cuda(loaded, ts, budget_s))
    elif cuda:
        why = "torch has no CUDA device (torch.cuda.is_available() is False)"
        info.errors["torch_cuda"] = why
        info.cuda_unavailable_reason = "; ".join(filter(None, [info.cuda_unavailable_reason, f"PyTorch: {why}"]))
    info.machine = _machine_span(before)
    info.seconds = round(time.perf_counter() - started, 2)
    return info


def measure_onnx(path: Path, tensors: dict[str, torch.Tensor], *, threads: int | None = None,
                 budget_s: float = 1.0, cuda: bool = True, cpu_session=None, cuda_session=None) -> LatencyInfo:
    """ONNX Runtime alone (for a variant): CPU, and CUDA with IO binding when truly in use; at the
    sample's batch and at batch 1. PyTorch is timed once, by `measure`, for the fp32 model."""
    threads = threads or runtime.default_threads()
    started, before = time.perf_counter(), machine()
    info = LatencyInfo(threads=threads, budget_s=budget_s)
    sizes = _sizes(tensors)
    cpu_sess = cpu_session
    if cpu_sess is None:
        try:
            cpu_sess = runtime.cpu_session(path, threads)
        except Exception as e:  # e.g. a CUDA-only graph: say why instead of a number
            info.errors["ort_cpu"] = _error(e)
    cs = None
    if not cuda:
        info.cuda_unavailable_reason = "CUDA measurements were turned off (--no-cuda)"
    elif cuda_session is not None:
        cs = cuda_session
    else:
        made = runtime.cuda_session(path, threads)
        cs = made.session
        if cs is None:
            info.cuda_unavailable_reason = f"ORT: {made.reason}"
            info.errors["ort_cuda"] = made.reason
    for tag, ts in sizes:
        batch, seq = _shape(ts)
        arrays = {n: t.detach().cpu().numpy() for n, t in ts.items()}
        if cpu_sess is not None:
            _record(info, "ort_cpu", tag, lambda: ort_cpu(path, arrays, threads, budget_s, batch, seq, cpu_sess))
        if cs is not None:
            _record(info, "ort_cuda", tag, lambda: ort_cuda(cs, arrays, budget_s, batch, seq))
    info.machine = _machine_span(before)
    info.seconds = round(time.perf_counter() - started, 2)
    return info


def _record(info: LatencyInfo, key: str, tag: str, fn: Callable[[], Timing]) -> None:
    try:
        timing = fn()
    except Exception as e:
        info.errors[key if not tag else f"{key}_batch1"] = _error(e)
        return
    if tag:
        info.batch1[key] = timing
    else:
        setattr(info, key, timing)


def _machine_span(before: dict[str, Any]) -> dict[str, Any]:
    after = machine()
    return {"cpu": before["cpu"], "logical_cpus": before["logical_cpus"],
            "load_avg_before": before["load_avg"], "load_avg_after": after["load_avg"]}
