"""PyTorch vs ONNX Runtime: on the sample rows, and at other batch / sequence sizes (shape probes).

Relative difference is |ort - torch| / max(|torch|, 1e-6); the verdict is numpy's allclose rule
(|ort - torch| <= atol + rtol * |torch|) on every element.
"""
from __future__ import annotations


import numpy as np
import onnxruntime as ort
import torch

from .report import DynamicInfo, OutputDiff, ParityInfo, Probe
from .sources.base import INPUT_IDS, TABULAR, LoadedModel

REL_FLOOR = 1e-6
SEQ_PROBE_STEP = 5


def torch_outputs(loaded: LoadedModel, tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        outs = loaded.adapter(loaded.module, dict(tensors))
    return {name: o.detach().cpu().numpy() for name, o in zip(loaded.output_names, outs)}


def to_numpy(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {n: t.detach().cpu().numpy() for n, t in tensors.items()}


def compare(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], atol: float, rtol: float,
            kinds: dict[str, str]) -> list[OutputDiff]:
    diffs = []
    for name, e in expected.items():
        a = actual.get(name)
        if a is None or a.shape != e.shape:
            diffs.append(OutputDiff(name, float("inf"), float("inf"), False, None, list(e.shape)))
            continue
        e64, a64 = e.astype(np.float64), a.astype(np.float64)
        if not (np.isfinite(e64).all() and np.isfinite(a64).all()):
            same = bool(np.array_equal(np.isnan(e64), np.isnan(a64)))
            e64, a64 = np.nan_to_num(e64, posinf=0, neginf=0), np.nan_to_num(a64, posinf=0, neginf=0)
        else:
            same = True
        absd = np.abs(a64 - e64)
        max_abs = float(absd.max()) if absd.size else 0.0
        max_rel = float((absd / np.maximum(np.abs(e64), REL_FLOOR)).max()) if absd.size else 0.0
        ok = same and bool(np.all(absd <= atol + rtol * np.abs(e64)))
        agreement = None
        if kinds.get(name) in ("logits", "probs") and e.ndim >= 2 and e.shape[-1] > 1:
            agreement = float((e.argmax(-1) == a.argmax(-1)).mean())
        diffs.append(OutputDiff(name, max_abs, max_rel, ok, agreement, list(e.shape)))
    return diffs


def parity(loaded: LoadedModel, session: ort.InferenceSession, tensors: dict[str, torch.Tensor],
           atol: float, rtol: float) -> tuple[ParityInfo, dict[str, np.ndarray]]:
    """Compare on the real sample rows. Returns the verdict and the ONNX outputs (for predictions)."""
    from .runtime import run
    expected = torch_outputs(loaded, tensors)
    actual = run(session, to_numpy(tensors))
    diffs = compare(expected, actual, atol, rtol, loaded.output_kinds)
    rows = next(iter(tensors.values())).shape[0]
    return ParityInfo(all(d.ok for d in diffs), atol, rtol, diffs, rows, session.get_providers()[0]), actual


# --- shape probes ---------------------------------------------------------------------------------

def resize(loaded: LoadedModel, tensors: dict[str, torch.Tensor], batch: int | None = None,
           sequence: int | None = None) -> dict[str, torch.Tensor]:
    """The sample at another batch size (rows cycled) and/or sequence length (padded or truncated)."""
    kinds = {i.name: i.kind for i in loaded.inputs}
    pad_id = getattr(loaded.tokenizer, "pad_token_id", None) or 0
    out = {}
    for name, t in tensors.items():
        if batch is not None:
            idx = torch.arange(batch) % t.shape[0]
            t = t[idx]
        if sequence is not None and kinds.get(name) != TABULAR and t.dim() >= 2:
            cur = t.shape[1]
            if sequence < cur:
                t = t[:, :sequence]
            elif sequence > cur:
                fill = pad_id if kinds.get(name) == INPUT_IDS else 0
                pad = torch.full((t.shape[0], sequence - cur), fill, dtype=t.dtype)
                t = torch.cat([t, pad], dim=1)
        out[name] = t.contiguous()
    return out


def _max_positions(loaded: LoadedModel) -> int:
    cfg = getattr(loaded.module, "config", None)
    n = getattr(cfg, "max_position_embeddings", None)
    if n is None:
        enc = getattr(loaded.module, "encoder", None)
        n = getattr(getattr(enc, "config", None), "max_position_embeddings", None)
    return int(n or 512)


def probe_plan(loaded: LoadedModel, tensors: dict[str, torch.Tensor], axes: dict[str, dict[int, str]]) -> list[tuple[str, int, int | None]]:
    """(axis varied, batch, sequence) for each probe: batch 1, another small batch, a longer and a shorter
    sequence. Probes prove that a size was not baked in; they need not be big, so they use few rows
    (PyTorch runs each one too, and on a large model the full sample is seconds per run)."""
    batch = next(iter(tensors.values())).shape[0]
    seq_inputs = [n for n, a in axes.items() if 1 in a]
    seq = tensors[seq_inputs[0]].shape[1] if seq_inputs else None
    plan: list[tuple[str, int, int | None]] = []
    if any(0 in a for a in axes.values()):
        if batch != 1:
            plan.append(("batch", 1, seq))
        traced = 2 if batch == 1 else batch  # a 1-row sample is traced with 2 rows (export._example_inputs)
        plan.append(("batch", next(b for b in (2, 3, 4) if b not in (batch, traced)), seq))
    if seq is not None:
        longer = seq + SEQ_PROBE_STEP
        plan.append(("sequence", min(batch, 2), longer if longer <= _max_positions(loaded) else max(2, seq // 2)))
        if seq > 2:
            plan.append(("sequence", 1, max(2, seq - 2)))
    return plan


def _fixed_dims(session: ort.InferenceSession, axes: dict[str, dict[int, str]]) -> list[tuple[str, str]]:
    """(axis name, message) for each axis the user asked to be dynamic but the graph declares fixed."""
    problems = []
    for i in session.get_inputs():
        for ax, sym in axes.get(i.name, {}).items():
            if ax < len(i.shape) and isinstance(i.shape[ax], int):
                problems.append((sym, f"input {i.name!r} axis {ax} ({sym}) is fixed to {i.shape[ax]} in the graph"))
    return problems


def probes(loaded: LoadedModel, session: ort.InferenceSession, tensors: dict[str, torch.Tensor],
           axes: dict[str, dict[int, str]], atol: float, rtol: float) -> DynamicInfo:
    """Run PyTorch and ORT at other sizes; a baked dimension fails naming the input and axis."""
    from .runtime import run
    requested = {n: [a[k] for k in sorted(a)] for n, a in axes.items()}
    if not axes:
        return DynamicInfo(ok=None, probes=[], requested=requested)
    fixed = _fixed_dims(session, axes)
    results: list[Probe] = []
    for axis, b, s in probe_plan(loaded, tensors, axes):
        inputs = resize(loaded, tensors, batch=b, sequence=s if axis == "sequence" else None)
        seq_used = next((t.shape[1] for n, t in inputs.items() if 1 in axes.get(n, {})), None)
        try:
            expected = torch_outputs(loaded, inputs)
        except Exception as e:  # the PyTorch model itself cannot run at this size: not an export fault
            results.append(Probe(b, seq_used, True, None, f"skipped: PyTorch itself fails at this size ({e})"[:300], axis))
            continue
        try:
            actual = run(session, to_numpy(inputs))
        except Exception as e:
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            where = "; ".join(m for sym, m in fixed if sym == axis) or f"the {axis} axis is not really dynamic"
            results.append(Probe(b, seq_used, False, None, f"{where}: ONNX Runtime failed: {first}", axis))
            continue
        diffs = compare(expected, actual, atol, rtol, loaded.output_kinds)
        worst = max((d.max_abs_diff for d in diffs), default=0.0)
        bad = [d for d in diffs if not d.ok]
        if bad:
            msg = (f"{', '.join(d.name for d in bad)} differ{'s' if len(bad) == 1 else ''} from PyTorch at "
                   f"{axis} {b if axis == 'batch' else seq_used} (max abs diff {worst:.3g}): the {axis} size "
                   "was baked into the graph")
            results.append(Probe(b, seq_used, False, worst, msg, axis))
        else:
            results.append(Probe(b, seq_used, True, worst, "ok", axis))
    for sym, problem in fixed:  # a fixed dimension is a failure even when no probe reached it
        if not any(problem in p.message for p in results):
            results.append(Probe(0, None, False, None, problem, sym))
    return DynamicInfo(ok=all(p.ok for p in results), probes=results, requested=requested)
