"""Timed runs: PyTorch eager and ONNX Runtime, CPU and (when truly in use) CUDA.

Each measurement warms up, then repeats within a time budget (bounded iterations) and reports
p50 / p90 / p99. PyTorch and ORT use the same intra-op thread count. CUDA numbers are produced
only by sessions whose `get_providers()` shows CUDA; otherwise the reason is recorded instead.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import runtime
from .report import LatencyInfo, Timing
from .sources.base import LoadedModel

WARMUP = 3
MIN_ITERS = 5
MAX_ITERS = 2000


def time_fn(fn: Callable[[], object], budget_s: float, warmup: int = WARMUP,
            min_iters: int = MIN_ITERS, max_iters: int = MAX_ITERS) -> tuple[float, float, float, int]:
    """Call fn `warmup` times, then until `budget_s` is spent (at least min_iters, at most max_iters).

    Returns (p50_ms, p90_ms, p99_ms, iterations)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < max_iters and (len(samples) < min_iters or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    p50, p90, p99 = np.percentile(samples, [50, 90, 99])
    return float(p50), float(p90), float(p99), len(samples)


def _timing(stats, batch: int, seq: int | None, threads: int | None, provider: str) -> Timing:
    p50, p90, p99, n = stats
    return Timing(round(p50, 3), round(p90, 3), round(p99, 3), n, batch, seq, threads, provider)


def _shape(tensors: dict[str, torch.Tensor]) -> tuple[int, int | None]:
    first = next(iter(tensors.values()))
    seq = next((t.shape[1] for n, t in tensors.items() if t.dim() >= 2 and t.dtype in (torch.int64, torch.int32)), None)
    return int(first.shape[0]), (int(seq) if seq is not None else None)


def torch_cpu(loaded: LoadedModel, tensors: dict[str, torch.Tensor], threads: int, budget_s: float) -> Timing:
    batch, seq = _shape(tensors)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            stats = time_fn(lambda: loaded.adapter(loaded.module, tensors), budget_s)
    finally:
        torch.set_num_threads(previous)
    return _timing(stats, batch, seq, threads, "torch-cpu")


def ort_cpu(path: Path, tensors: dict[str, np.ndarray], threads: int, budget_s: float, batch: int,
            seq: int | None, session=None) -> Timing:
    sess = session or runtime.cpu_session(path, threads)
    feeds = runtime.feeds(sess, tensors)
    stats = time_fn(lambda: sess.run(None, feeds), budget_s)
    return _timing(stats, batch, seq, threads, sess.get_providers()[0])


def ort_cuda(sess, tensors: dict[str, np.ndarray], budget_s: float, batch: int, seq: int | None) -> Timing:
    """ORT on CUDA with IO binding: inputs copied to the device once, outputs left on the device."""
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
    stats = time_fn(step, budget_s)
    return _timing(stats, batch, seq, None, sess.get_providers()[0])


def torch_cuda(loaded: LoadedModel, tensors: dict[str, torch.Tensor], budget_s: float) -> Timing:
    batch, seq = _shape(tensors)
    module = loaded.module.to("cuda")
    try:
        on_dev = {n: t.to("cuda") for n, t in tensors.items()}

        def step():
            loaded.adapter(module, on_dev)
            torch.cuda.synchronize()
        with torch.inference_mode():
            stats = time_fn(step, budget_s)
    finally:
        loaded.module.to("cpu")
        torch.cuda.empty_cache()
    return _timing(stats, batch, seq, None, f"torch-cuda ({torch.cuda.get_device_name(0)})")


def measure(loaded: LoadedModel, path: Path, tensors: dict[str, torch.Tensor], *, threads: int | None = None,
            budget_s: float = 1.0, cuda: bool = True, cpu_session=None) -> LatencyInfo:
    """All four measurements the device allows; an unavailable one records why, never a number."""
    threads = threads or runtime.default_threads()
    batch, seq = _shape(tensors)
    arrays = {n: t.detach().cpu().numpy() for n, t in tensors.items()}
    info = LatencyInfo(threads=threads, budget_s=budget_s)
    for key, fn in (("torch_cpu", lambda: torch_cpu(loaded, tensors, threads, budget_s)),
                    ("ort_cpu", lambda: ort_cpu(path, arrays, threads, budget_s, batch, seq, cpu_session))):
        try:
            setattr(info, key, fn())
        except Exception as e:
            info.errors[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    if not cuda:
        info.cuda_unavailable_reason = "CUDA measurements were turned off (--no-cuda)"
        return info
    cs = runtime.cuda_session(path, threads)
    reasons = []
    if cs.session is not None:
        try:
            info.ort_cuda = ort_cuda(cs.session, arrays, budget_s, batch, seq)
        except Exception as e:
            info.errors["ort_cuda"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    else:
        reasons.append(f"ORT: {cs.reason}")
        info.errors["ort_cuda"] = cs.reason
    if torch.cuda.is_available():
        try:
            info.torch_cuda = torch_cuda(loaded, tensors, budget_s)
        except Exception as e:
            info.errors["torch_cuda"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    else:
        why = "torch has no CUDA device (torch.cuda.is_available() is False)"
        reasons.append(f"PyTorch: {why}")
        info.errors["torch_cuda"] = why
    info.cuda_unavailable_reason = "; ".join(reasons) or None
    return info
