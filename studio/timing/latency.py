"""Timed runs: PyTorch eager and ONNX Runtime, CPU and (when truly in use) CUDA.

Each measurement warms up, then repeats within a time budget (bounded iterations) and reports
p50 / p90 / p99 with the iteration count, threads, batch size and sequence length. PyTorch and ORT
use the same intra-op thread count. Everything is measured at the sample's batch and again at batch 1.
On CPU, PyTorch and every ONNX file are timed side by side, in alternating rounds (`side_by_side`): the
speed of a shared machine drifts, and timing one runtime after the other would put the drift into
their ratio.
CUDA numbers are produced only by sessions whose `get_providers()` shows CUDA (ORT with IO binding:
inputs copied to the device once, outputs left there; PyTorch with `torch.cuda.synchronize()` inside
the timed call); otherwise the reason is recorded instead. The machine's load average is recorded
beside the numbers: on a busy machine every timing is pessimistic.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from studio.checks import runtime
from studio.checks.parity import to_numpy
from studio.errors import first_line
from studio.quiet import quiet
from studio.report.model import LatencyInfo, Timing
from studio.sources.base import LoadedModel
from studio.spec import default
from studio.timing._confidence import ci_pct, median_ci  # noqa: F401 - median_ci: part of latency's interface
from studio.timing._rounds import (  # noqa: F401 - the engine's names are part of latency's interface
    MAX_ITERS,
    MIN_CALLS,
    MIN_ITERS,
    MIN_ROUNDS,
    MIN_WARMUP,
    PRECISION,
    ROUNDS,
    SETTLE_MAX_S,
    SLOW_CALL_MS,
    WARMUP,
    Stats,
    settle,
    side_by_side,
)


def _timed(
    fn: Callable[[], object],
    budget_s: float,
    warmup: int = WARMUP,
    min_iters: int = MIN_ITERS,
    max_iters: int = MAX_ITERS,
    precision: float | None = None,
) -> Stats:
    """One callable alone (in ROUNDS blocks when `precision` may stop it early, else in one)."""
    rounds = ROUNDS if precision is not None else 1
    result = side_by_side({0: fn}, budget_s, rounds, warmup, min_iters, max_iters, precision=precision)[0]
    if isinstance(result, BaseException):
        raise result
    return result


def timing(
    stats: Stats, batch: int, seq: int | None, threads: int | None, provider: str, io_binding: bool = False
) -> Timing:
    return Timing(
        round(stats.p50, 3),
        round(stats.p90, 3),
        round(stats.p99, 3),
        stats.iterations,
        batch,
        seq,
        threads,
        provider,
        warmup=stats.untimed,
        io_binding=io_binding,
        ci95_pct=round(stats.ci95_pct, 2) if stats.ci95_pct is not None else None,
        stopped=stats.stopped,
    )


def shape_of(tensors: dict[str, Any]) -> tuple[int, int | None]:
    first = next(iter(tensors.values()))
    seq = next(
        (
            t.shape[1]
            for t in tensors.values()
            if t.ndim >= 2 and str(t.dtype).replace("torch.", "") in ("int64", "int32")
        ),
        None,
    )
    return int(first.shape[0]), (int(seq) if seq is not None else None)


def machine() -> dict[str, Any]:
    """CPU model, logical CPUs and the 1-minute load average now."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    # only then platform.processor(): on Linux it runs `uname -p`, a fork of this (large) process
    cpu = cpu or platform.processor() or ""
    try:
        load = round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        load = None
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "load_avg": load}


# --- single measurements -------------------------------------------------------------------------


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

    stats = _timed(step, budget_s, precision=PRECISION)
    return timing(stats, batch, seq, None, sess.get_providers()[0], io_binding=True)


def torch_cuda(loaded: LoadedModel, tensors: dict[str, torch.Tensor], budget_s: float) -> Timing:
    """PyTorch eager on the GPU; inputs moved once, `torch.cuda.synchronize()` inside each timed call."""
    batch, seq = shape_of(tensors)
    module = loaded.module.to("cuda")
    try:
        on_dev = {n: t.to("cuda") for n, t in tensors.items()}

        def step():
            loaded.adapter(module, on_dev)
            torch.cuda.synchronize()

        with torch.inference_mode():
            stats = _timed(step, budget_s, precision=PRECISION)
    finally:
        loaded.module.to("cpu")
        torch.cuda.empty_cache()
    return timing(stats, batch, seq, None, f"torch-cuda ({torch.cuda.get_device_name(0)})")


def _batch1(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The sample's first row alone (None when the sample already has one row)."""
    batch, _ = shape_of(tensors)
    if batch <= 1:
        return None
    return {n: t[:1].contiguous() for n, t in tensors.items()}


def _sizes(tensors: dict[str, torch.Tensor]) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """(tag, tensors) for the sample's batch ("") and, when it differs, batch 1 ("b1")."""
    b1 = _batch1(tensors)
    return [("", tensors)] + ([("b1", b1)] if b1 is not None else [])


# --- full measurements ---------------------------------------------------------------------------


@dataclass
class Target:
    """An ONNX file to time. cpu_skip / cuda_skip: why it is not timed there (recorded instead of a
    number). cuda_session: a session already made for it (reused instead of opening another).
    cpu_session: a CPU session already made for it with the latency's settings (runtime.cpu_session at
    the same threads, arena on) that has run the sample (the checks' session): reused, and warm for it.
    cpu_calls: the ms of that session's calls on the sample (parity's), timed as latency times: the first one
    is the first timed call at the sample's size (side_by_side's `seeded`) when it took SLOW_CALL_MS or more."""

    path: Path
    cpu_skip: str | None = None
    cuda_skip: str | None = None
    cuda_session: Any = None
    cpu_session: Any = None
    cpu_calls: list[float] = field(default_factory=list)


def measure_all(
    loaded: LoadedModel,
    targets: dict[str, Target],
    tensors: dict[str, torch.Tensor],
    *,
    threads: int | None = None,
    budget_s: float = default("latency_budget_s"),
    cuda: bool = default("cuda"),
    progress: Callable[[float], None] | None = None,
    torch_warm: bool = False,
) -> dict[str, LatencyInfo]:
    """PyTorch eager and every target, at the sample's batch and at batch 1; one LatencyInfo per target,
    each with the PyTorch run it was timed beside. On CPU every file is timed side by side with PyTorch
    (`side_by_side`), one file at a time: its session is opened, timed and released before the next
    file's, so memory holds PyTorch's weights and one ONNX file's, never every file's (bert-base with int8:
    1.67 GB with all sessions open at once). A file's speedup over PyTorch is then measured within one
    stretch of time, so it holds on a machine whose speed drifts; a ratio between two files goes through
    PyTorch (variants.attach_latency). Each runtime gets at most `budget_s` of wall time per size, less
    once every median is known within PRECISION. PyTorch runs with transformers' default attention
    (`users_attention`; LatencyInfo.torch_attention says which). CUDA runs (ORT with IO binding, then
    PyTorch) are timed one after another, only with sessions that really run on CUDA. A measurement that
    cannot run records why, never a number. `progress(fraction)` is called after each CPU round, with the
    fraction of the CPU rounds done (CUDA runs, if any, come after). `torch_warm`: PyTorch has already run
    the sample in this process (the parity reference); with a target's `cpu_session`, those runtimes are
    timed as warm at the sample's size (side_by_side's `warm`; batch 1 always warms up)."""
    threads = threads or runtime.default_threads()
    started, before = time.perf_counter(), machine()
    infos = {name: LatencyInfo(threads=threads, budget_s=budget_s) for name in targets}
    first = next(iter(targets))
    sizes = _sizes(tensors)
    say = progress or (lambda fraction: None)
    with users_attention(loaded.module) as attention:
        for n, (name, target) in enumerate(targets.items()):
            infos[name].torch_attention = attention
            step = lambda f, n=n: say((n + f) / len(targets))  # noqa: E731 - f: the fraction of this file's rounds
            # PyTorch is warm for every file after the first: it has just run these very tensors
            warm = torch_warm or n > 0
            _time_one_file(loaded, name, target, infos[name], sizes, threads, budget_s, cuda, step, warm, n == 0)
        if cuda and torch.cuda.is_available():
            runtime.release_memory()  # the last file's session, before PyTorch's CUDA runs
        _torch_cuda_all(loaded, infos[first], sizes, budget_s, cuda)
    span, seconds = _machine_span(before), round(time.perf_counter() - started, 2)
    for info in infos.values():
        info.machine, info.seconds = dict(span), seconds
    return infos


def _time_one_file(loaded, name, target, info, sizes, threads, budget_s, cuda, step, torch_warm, main) -> None:
    """One ONNX file beside PyTorch at every size (CPU side by side, then ORT CUDA), its sessions released
    after. A file that cannot run on CPU is not timed there, nor PyTorch beside it, unless it is the `main`
    file, whose info holds PyTorch's figures for the report (`step(fraction)`: progress)."""
    if target.cpu_session is None:  # one opens: the previous file's session, or the variants' leftovers, go first
        runtime.release_memory()
    cpu_sessions, cuda_sessions = _open_sessions({name: target}, {name: info}, threads, cuda)
    try:
        for i, (tag, ts) in enumerate(sizes):
            on_round = lambda done, rounds, i=i: step((i + done / rounds) / len(sizes))  # noqa: E731
            warm = _warm_keys(name, {name: target}, torch_warm) if not tag else frozenset()
            seeded = _seeds(name, target) if not tag else {}
            if cpu_sessions or main:
                _cpu_side_by_side(
                    loaded, name, cpu_sessions, {name: info}, tag, ts, threads, budget_s, on_round, warm, seeded
                )
            arrays, (batch, seq) = to_numpy(ts), shape_of(ts)
            for sess in cuda_sessions.values():
                _record(info, "ort_cuda", tag, lambda: ort_cuda(sess, arrays, budget_s, batch, seq))  # noqa: B023 - called at once
    finally:
        cpu_sessions.clear()
        cuda_sessions.clear()
        target.cpu_session = target.cuda_session = None  # a session handed over is released with the ones made here


def _warm_keys(first: str, targets: dict[str, Target], torch_warm: bool) -> frozenset:
    """side_by_side keys of the runtimes that have already run the sample (see measure_all)."""
    keys = {(name, "ort_cpu") for name, t in targets.items() if t.cpu_session is not None and not t.cpu_skip}
    return frozenset(keys | ({(first, "torch_cpu")} if torch_warm else set()))


def _seeds(name: str, target: Target) -> dict:
    """side_by_side's `seeded` at the sample's size: the handed-over session's first call there (parity's)."""
    if target.cpu_session is None or target.cpu_skip or not target.cpu_calls:
        return {}
    return {(name, "ort_cpu"): target.cpu_calls[0]}


def _open_sessions(targets: dict[str, Target], infos: dict[str, LatencyInfo], threads: int, cuda: bool):
    """One ORT CPU session per target (and a CUDA one where it really runs there); why not, where not."""
    cpu_sessions, cuda_sessions = {}, {}
    for name, target in targets.items():
        info = infos[name]
        if target.cpu_skip:
            info.errors["ort_cpu"] = target.cpu_skip
        elif target.cpu_session is not None:
            cpu_sessions[name] = target.cpu_session
        else:
            try:
                cpu_sessions[name] = runtime.cpu_session(target.path, threads)
            except Exception as e:  # e.g. a CUDA-only graph: say why instead of a number
                info.errors["ort_cpu"] = first_line(e, with_type=True)
        if not cuda:
            info.cuda_unavailable_reason = info.errors["ort_cuda"] = "CUDA measurements were turned off (--no-cuda)"
        elif target.cuda_skip:
            info.cuda_unavailable_reason = info.errors["ort_cuda"] = target.cuda_skip
        elif target.cuda_session is not None:
            cuda_sessions[name] = target.cuda_session
        else:
            made = runtime.cuda_session(target.path, threads)
            if made.session is None:
                info.cuda_unavailable_reason = f"ORT: {made.reason}"
                info.errors["ort_cuda"] = str(made.reason)  # set whenever there is no session
            else:
                cuda_sessions[name] = made.session
    return cpu_sessions, cuda_sessions


def _cpu_side_by_side(loaded, first, cpu_sessions, infos, tag, ts, threads, budget_s, on_round, warm, seeded) -> None:
    """PyTorch (recorded in `first`'s info) and every CPU session, timed side by side at one size."""
    batch, seq = shape_of(ts)
    arrays = to_numpy(ts)
    runners: dict[tuple[str, str], Callable[[], object]] = {(first, "torch_cpu"): _torch_step(loaded, ts)}
    providers = {(first, "torch_cpu"): "torch-cpu"}
    for name, sess in cpu_sessions.items():
        feeds = runtime.feeds(sess, arrays)
        runners[(name, "ort_cpu")] = functools.partial(sess.run, None, feeds)
        providers[(name, "ort_cpu")] = sess.get_providers()[0]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            results = side_by_side(runners, budget_s, precision=PRECISION, on_round=on_round, warm=warm, seeded=seeded)
    finally:
        torch.set_num_threads(previous)
    for (name, key), result in results.items():
        _record(infos[name], key, tag, lambda: _unwrap(result, batch, seq, threads, providers[(name, key)]))  # noqa: B023 - called at once


def _torch_cuda_all(loaded, info: LatencyInfo, sizes, budget_s: float, cuda: bool) -> None:
    if cuda and torch.cuda.is_available():
        for tag, ts in sizes:
            _record(info, "torch_cuda", tag, lambda: torch_cuda(loaded, ts, budget_s))  # noqa: B023 - called at once
    elif cuda:
        why = "torch has no CUDA device (torch.cuda.is_available() is False)"
        info.errors["torch_cuda"] = why
        info.cuda_unavailable_reason = "; ".join(filter(None, [info.cuda_unavailable_reason, f"PyTorch: {why}"]))


USERS_ATTENTION = "sdpa"  # transformers' default attention where torch supports it: how users run the model


@contextlib.contextmanager
def users_attention(module: torch.nn.Module):
    """PyTorch timed the way users run it: every transformers model inside `module` switched from the
    eager attention the export needs to transformers' default (sdpa) for the duration, then back.
    Yields what was timed, in words (None: no transformers model inside)."""
    switched, kept = [], []
    # transformers models, whose attention setter and config torch's Module type cannot know about
    roots: list[Any] = [m for m in module.modules() if hasattr(m, "set_attn_implementation") and hasattr(m, "config")]
    for m in roots:
        before = getattr(m.config, "_attn_implementation", None)
        if before == USERS_ATTENTION:
            continue
        try:
            with quiet(("transformers",)):
                m.set_attn_implementation(USERS_ATTENTION)
        except Exception as e:  # noqa: BLE001 - an architecture without sdpa: timed as exported, and said so
            kept.append(f"{type(m).__name__} kept {before} ({first_line(e, 120)})")
            continue
        if getattr(m.config, "_attn_implementation", None) == USERS_ATTENTION:
            switched.append((m, before))
        else:
            kept.append(f"{type(m).__name__} kept {m.config._attn_implementation}")
    notes = [f"{USERS_ATTENTION} attention (transformers' default; the export traced eager)"] * bool(switched) + kept
    try:
        yield ("; ".join(notes) or f"{USERS_ATTENTION} attention") if roots else None
    finally:
        for m, before in switched:
            with contextlib.suppress(Exception), quiet(("transformers",)):
                m.set_attn_implementation(before)


def _torch_step(loaded: LoadedModel, tensors: dict[str, torch.Tensor]) -> Callable[[], object]:
    return lambda: loaded.adapter(loaded.module, tensors)


def _unwrap(result, batch: int, seq: int | None, threads: int, provider: str) -> Timing:
    if isinstance(result, BaseException):
        raise result
    return timing(result, batch, seq, threads, provider)


def _record(info: LatencyInfo, key: str, tag: str, fn: Callable[[], Timing]) -> None:
    try:
        measured = fn()
    except Exception as e:
        info.errors[key if not tag else f"{key}_batch1"] = first_line(e, with_type=True)
        return
    if tag:
        info.batch1[key] = measured
    else:
        setattr(info, key, measured)


def _machine_span(before: dict[str, Any]) -> dict[str, Any]:
    after = machine()
    return {
        "cpu": before["cpu"],
        "logical_cpus": before["logical_cpus"],
        "load_avg_before": before["load_avg"],
        "load_avg_after": after["load_avg"],
    }
