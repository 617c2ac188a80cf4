"""The one place that builds onnxruntime sessions, and the truth about which provider runs them.

onnxruntime-gpu lists CUDAExecutionProvider as *available* even where CUDA cannot load, and then
silently runs on CPU; only `session.get_providers()` tells what a session really uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from studio.errors import first_line

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def default_threads() -> int:
    """Physical cores when psutil knows them, else logical CPUs (at least 1)."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except (ImportError, OSError, RuntimeError):  # no psutil, or it cannot read the CPU topology here
        n = None
    return max(1, n or os.cpu_count() or 1)


def session_options(threads: int | None = None, optimization: str = "all", arena: bool = True) -> ort.SessionOptions:
    """arena=False: no CPU memory arena (it never shrinks): lower peak memory for one-off checks."""
    so = ort.SessionOptions()
    so.enable_cpu_mem_arena = arena
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only; the studio reports what matters itself
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    return so


def cpu_session(
    path: str | Path,
    threads: int | None = None,
    optimization: str = "all",
    arena: bool = True,
    profile_prefix: str | None = None,
) -> ort.InferenceSession:
    """profile_prefix: ONNX Runtime's profiler on, its JSON file starting with this path (studio.checks.profile
    reads it after `session.end_profiling()`, which returns the file's name)."""
    so = session_options(threads, optimization, arena)
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), sess_options=so, providers=[CPU])


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc), so the next stage's peak
    does not stack on the previous stage's leftovers."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def check_session(
    path: str | Path, threads: int = 1, arena: bool = False
) -> tuple[ort.InferenceSession | None, str | None]:
    """(the session, None) when ONNX Runtime opens `path` on the CPU, else (None, why: its first line). The
    session is built as the checks build theirs (all optimisations; no arena unless asked), so they can use it."""
    try:
        return cpu_session(path, threads, arena=arena), None
    except Exception as e:
        return None, first_line(e, 400, with_type=True)


@dataclass
class CudaSession:
    session: ort.InferenceSession | None
    reason: str | None  # why CUDA is not in use (None when it is)


def _preload_cuda_libs() -> None:
    """Let onnxruntime-gpu find CUDA/cuDNN from the nvidia-* wheels torch ships, when present."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except (OSError, RuntimeError, ImportError):  # no CUDA libraries to preload: cuda_session says why
            pass


def cuda_session(path: str | Path, threads: int | None = None) -> CudaSession:
    """A session on CUDA, or the reason there is none. Never returns a CPU session under a CUDA label."""
    if CUDA not in ort.get_available_providers():
        return CudaSession(
            None, f"this onnxruntime build ({ort.__version__}) has no CUDAExecutionProvider (install onnxruntime-gpu)"
        )
    try:
        import torch

        if not torch.cuda.is_available():
            return CudaSession(None, "no CUDA device is visible (torch.cuda.is_available() is False)")
    except Exception:  # noqa: BLE001 - torch's CUDA probe itself broke (driver): ORT's own attempt below says why
        pass
    _preload_cuda_libs()
    try:
        sess = ort.InferenceSession(str(path), sess_options=session_options(threads), providers=[CUDA, CPU])
    except Exception as e:
        return CudaSession(None, f"the CUDA session could not be created: {first_line(e)}")
    used = sess.get_providers()
    if not used or used[0] != CUDA:
        return CudaSession(
            None,
            "onnxruntime fell back to CPU: CUDA or cuDNN libraries could not be loaded "
            f"(session providers: {', '.join(used)})",
        )
    return CudaSession(sess, None)


def feeds(session: ort.InferenceSession, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Select and order the arrays the session's graph takes; error naming any missing input."""
    out = {}
    for i in session.get_inputs():
        if i.name not in tensors:
            raise KeyError(f"ONNX input {i.name!r} has no tensor (have: {', '.join(tensors)})")
        out[i.name] = tensors[i.name]
    return out


def run(session: ort.InferenceSession, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds(session, tensors))))


def save_optimized(
    src: str | Path, dest: str | Path, threads: int | None = None, level: str = "extended", external_data: bool = False
) -> Path:
    """Apply ONNX Runtime's graph optimisations to `src` on the CPU provider and save the result offline.

    Level "extended" and below stay hardware-independent ("all" adds layout transforms tied to this
    CPU, which ONNX Runtime warns against saving). With external_data, initializers go to
    `<dest>.data` beside the graph (needed above 2 GiB)."""
    so = session_options(threads, level)
    so.optimized_model_filepath = str(dest)
    if external_data:
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", Path(dest).name + ".data"
        )
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), sess_options=so, providers=[CPU])
    return Path(dest)
