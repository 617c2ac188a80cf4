"""PyTorch vs ONNX Runtime: on the sample rows, and at other batch / sequence sizes (shape probes).

Relative difference is |ort - torch| / max(|torch|, 1e-6); the verdict is numpy's allclose rule
(|ort - torch| <= atol + rtol * |torch|) on every element finite in both runtimes. NaN / inf are counted
per output in each runtime: alike in both (NaN and NaN, the same infinity) they are reported and not
differences; in one runtime only they fail the output, naming the rows, and its difference is NaN.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from studio.errors import first_line
from studio.report.model import DynamicInfo, OutputDiff, ParityInfo, Probe, worst_diff
from studio.sources.base import ATTENTION_MASK, INPUT_IDS, TABULAR, LoadedModel

REL_FLOOR = 1e-6
SEQ_PROBE_STEP = 5
TOPK = 5  # top-k agreement: k = min(TOPK, classes - 1), for outputs with at least 3 classes
MAX_ROWS_LISTED = 100  # rows named in a report field (the message shows the first 10)
EMBEDDING_KINDS = ("embedding", "hidden")  # output kinds judged by cosine similarity when a rule says so


def torch_outputs(loaded: LoadedModel, tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        outs = loaded.adapter(loaded.module, dict(tensors))
    return {name: o.detach().cpu().numpy() for name, o in zip(loaded.output_names, outs)}


def to_numpy(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {n: t.detach().cpu().numpy() for n, t in tensors.items()}


def _rows(mask: np.ndarray) -> list[int]:
    """1-based indices along the first axis (the batch rows) where `mask` holds anywhere."""
    if mask.ndim == 0:
        return [1] if bool(mask) else []
    return [int(i) + 1 for i in np.nonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0][:MAX_ROWS_LISTED]]


def _shown(rows: list[int]) -> str:
    return ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")


def nonfinite(e64: np.ndarray, a64: np.ndarray) -> dict:
    """NaN / inf counted in each runtime; which elements are non-finite alike in both (NaN and NaN, or the
    same infinity: reported, never counted as a difference) and which disagree (a failure)."""
    fin_e, fin_a = np.isfinite(e64), np.isfinite(a64)
    with np.errstate(invalid="ignore"):
        alike = ~fin_e & ~fin_a & ((np.isnan(e64) & np.isnan(a64)) | (e64 == a64))
    disagree = ~(fin_e & fin_a) & ~alike
    counts: dict[str, Any] = {
        "torch_nan": int(np.isnan(e64).sum()),
        "torch_inf": int(np.isinf(e64).sum()),
        "ort_nan": int(np.isnan(a64).sum()),
        "ort_inf": int(np.isinf(a64).sum()),
        "same_nonfinite": int(alike.sum()),
        "nonfinite_rows": _rows(disagree),
    }
    notes = []
    ort_only, torch_only = int((~fin_a & fin_e).sum()), int((~fin_e & fin_a).sum())
    if ort_only:
        notes.append(f"{ort_only} non-finite value(s) in ONNX Runtime where PyTorch is finite")
    if torch_only:
        notes.append(f"{torch_only} non-finite value(s) in PyTorch where ONNX Runtime is finite")
    other = int(disagree.sum()) - ort_only - torch_only
    if other:
        notes.append(f"{other} non-finite value(s) of another kind in each runtime (NaN vs inf)")
    if notes:
        notes[-1] += f" (rows {_shown(counts['nonfinite_rows'])}, 1-based)"
    if counts["same_nonfinite"]:
        notes.append(
            f"{counts['same_nonfinite']} value(s) non-finite alike in both runtimes "
            "(the same NaN / inf: not a difference)"
        )
    counts["note"] = "; ".join(notes)
    return {"disagree": disagree, "comparable": fin_e & fin_a, **counts}


def real_tokens(loaded: LoadedModel, tensors: dict[str, torch.Tensor]) -> np.ndarray | None:
    """[batch, sequence] bool: the tokens that are not padding (the attention mask), None without one."""
    name = next((i.name for i in loaded.inputs if i.kind == ATTENTION_MASK and i.name in tensors), None)
    return None if name is None else tensors[name].detach().cpu().numpy() != 0


def _rows_cosine(e: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows (last axis); two zero vectors count as 1, one as 0; NaN stays NaN."""
    dot = (e * a).sum(-1)
    ne, na = np.sqrt((e * e).sum(-1)), np.sqrt((a * a).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (ne * na)
    zero_e, zero_a = ne == 0, na == 0
    cos = np.where(zero_e & zero_a, 1.0, np.where(zero_e | zero_a, 0.0, cos))
    return np.where(np.isnan(dot) | np.isnan(ne) | np.isnan(na), np.nan, cos)


def _topk_sets_equal(e: np.ndarray, a: np.ndarray, k: int) -> np.ndarray:
    top_e = np.sort(np.argsort(-e, axis=-1, kind="stable")[..., :k], axis=-1)
    top_a = np.sort(np.argsort(-a, axis=-1, kind="stable")[..., :k], axis=-1)
    return (top_e == top_a).all(-1)


def output_checks(kind: str | None, e: np.ndarray, a: np.ndarray, mask: np.ndarray | None) -> dict:
    """What an output means, checked (OutputDiff fields):
    - class outputs (logits / probs) [batch, classes]: argmax agreement over rows, and top-k agreement (the
      k best classes are the same set, k = min(TOPK, classes - 1), for >= 3 classes);
    - token classification logits [batch, seq, labels]: argmax agreement over real (unpadded) tokens;
    - question-answering span logits [batch, seq] (kind "span"): start / end argmax over real tokens, per row;
    - embeddings (kind "embedding", and token-level "hidden"): the lowest cosine similarity over rows (2-D)
      or over real tokens (3-D).
    `mask`: [batch, seq] real tokens, or None (every position counts)."""
    out: dict = {}
    token_mask = mask if mask is not None and e.ndim >= 2 and e.shape[:2] == mask.shape else None
    if kind in ("logits", "probs") and e.ndim == 2 and e.shape[-1] > 1:
        out["argmax_agreement"] = float((e.argmax(-1) == a.argmax(-1)).mean()) if e.size else None
        out["agreement_over"] = "rows"
        if e.shape[-1] >= 3:
            k = min(TOPK, e.shape[-1] - 1)
            out["topk"], out["topk_agreement"] = k, float(_topk_sets_equal(e, a, k).mean())
    elif kind in ("logits", "probs") and e.ndim == 3 and e.shape[-1] > 1:
        same = e.argmax(-1) == a.argmax(-1)
        if token_mask is not None:
            same = same[token_mask]
        out["argmax_agreement"] = float(same.mean()) if same.size else None
        out["agreement_over"] = "real tokens" if token_mask is not None else "tokens"
    elif kind == "span" and e.ndim == 2 and e.shape[-1] > 1:
        if token_mask is not None:
            e, a = np.where(token_mask, e, -np.inf), np.where(token_mask, a, -np.inf)
        out["argmax_agreement"] = float((e.argmax(-1) == a.argmax(-1)).mean()) if e.size else None
        out["agreement_over"] = "rows, over real tokens" if token_mask is not None else "rows"
    elif kind in EMBEDDING_KINDS and e.ndim >= 2 and e.size:
        cos = _rows_cosine(e.astype(np.float64), a.astype(np.float64))
        if e.ndim == 3 and token_mask is not None:
            cos = cos[token_mask]
        out["min_cosine"] = float(np.min(cos)) if cos.size else None
    return out


def compare(
    expected: dict[str, np.ndarray],
    actual: dict[str, np.ndarray],
    atol: float,
    rtol: float,
    kinds: dict[str, str],
    mask: np.ndarray | None = None,
) -> list[OutputDiff]:
    """Per output: max abs / rel difference over the elements finite in both runtimes, the allclose
    verdict, non-finite values counted, and the checks its kind calls for (`output_checks`). A value
    non-finite in one runtime only (or NaN in one and inf in the other) fails, and its difference is NaN:
    unknown, never a number standing in for one. mask: [batch, seq] real tokens (see `real_tokens`), for the
    checks that skip padding."""
    diffs = []
    for name, e in expected.items():
        a = actual.get(name)
        if a is None or a.shape != e.shape:
            diffs.append(OutputDiff(name, float("inf"), float("inf"), False, None, list(e.shape)))
            continue
        e64, a64 = e.astype(np.float64), a.astype(np.float64)
        nf = nonfinite(e64, a64)
        comparable = nf.pop("comparable")
        disagree = nf.pop("disagree")
        ev, av = e64[comparable], a64[comparable]
        absd = np.abs(av - ev)
        if disagree.any():
            max_abs = max_rel = float("nan")
        else:
            max_abs = float(absd.max()) if absd.size else 0.0
            max_rel = float((absd / np.maximum(np.abs(ev), REL_FLOOR)).max()) if absd.size else 0.0
        ok = not disagree.any() and bool(np.all(absd <= atol + rtol * np.abs(ev)))
        checks = output_checks(kinds.get(name), e, a, mask)
        agreement = checks.pop("argmax_agreement", None)
        diffs.append(OutputDiff(name, max_abs, max_rel, ok, agreement, list(e.shape), **checks, **nf))
    return diffs


# --- verdict rules beyond allclose (the variants': studio/variants/table.py VARIANT_TABLE) ---------------


@dataclass(frozen=True)
class Tolerance:
    """A verdict rule: allclose with atol / rtol, plus optional argmax agreement and embedding cosine rules."""

    atol: float
    rtol: float
    min_agreement: float | None  # argmax agreement required on class outputs; None = not judged
    rule: str
    min_cosine: float | None = None  # embeddings: lowest cosine similarity required; None = element-wise rule

    def as_dict(self) -> dict[str, Any]:
        return {
            "atol": self.atol,
            "rtol": self.rtol,
            "min_argmax_agreement": self.min_agreement,
            "min_cosine": self.min_cosine,
            "rule": self.rule,
        }


def judge(
    expected: dict[str, np.ndarray],
    actual: dict[str, np.ndarray],
    tol: Tolerance,
    kinds: dict[str, str],
    mask: np.ndarray | None = None,
) -> list[OutputDiff]:
    """`compare` with the rule's atol / rtol, then the argmax-agreement rule on class outputs and,
    when the tolerance has one, the cosine rule on embeddings (instead of the element-wise one)."""
    diffs = compare(expected, actual, tol.atol, tol.rtol, kinds, mask)
    if tol.min_agreement is not None:
        for d in diffs:
            if d.argmax_agreement is not None and d.argmax_agreement < tol.min_agreement:
                d.ok = False
    if tol.min_cosine is not None:
        for d in diffs:
            if kinds.get(d.name) in EMBEDDING_KINDS:
                same_shape = list(actual[d.name].shape) == d.shape if d.name in actual else False
                # NaN >= x is False: a non-finite embedding fails
                d.ok = bool(same_shape and d.min_cosine is not None and d.min_cosine >= tol.min_cosine)
    return diffs


# --- the PyTorch reference, computed once per input set ----------------------------------------------


def cached_reference(loaded: LoadedModel) -> LoadedModel:
    """The same model whose adapter remembers its outputs per input set: every variant is compared with
    PyTorch on the same sample and probe sizes, and PyTorch runs once for each of them."""
    cache: dict[tuple, tuple[torch.Tensor, ...]] = {}
    inner = loaded.adapter

    def adapter(module, named: dict[str, torch.Tensor]):
        key = tuple(
            (n, tuple(t.shape), str(t.dtype), hashlib.sha1(t.detach().cpu().numpy().tobytes()).hexdigest())
            for n, t in sorted(named.items())
        )
        if key not in cache:
            cache[key] = tuple(o.detach().clone() if isinstance(o, torch.Tensor) else o for o in inner(module, named))
        return cache[key]

    return replace(loaded, adapter=adapter)


def parity(
    loaded: LoadedModel,
    session: ort.InferenceSession,
    tensors: dict[str, torch.Tensor],
    atol: float,
    rtol: float,
    calls: list[float] | None = None,
) -> tuple[ParityInfo, dict[str, np.ndarray]]:
    """Compare on the real sample rows. Returns the verdict and the ONNX outputs (for predictions).
    `calls`: a list that gets the ms of ONNX Runtime's call on the sample."""
    from studio.checks.runtime import run

    expected = torch_outputs(loaded, tensors)
    rows = next(iter(tensors.values())).shape[0]
    arrays = to_numpy(tensors)
    try:
        t0 = time.perf_counter()
        actual = run(session, arrays)
        if calls is not None:
            calls.append((time.perf_counter() - t0) * 1000.0)
    except Exception as e:  # the graph loads but cannot run the real rows (a size baked in at the trace)
        error = f"ONNX Runtime failed on the sample's {rows} rows: {first_line(e, 400)}"
        return ParityInfo(False, atol, rtol, [], rows, session.get_providers()[0], error=error), {}
    diffs = compare(expected, actual, atol, rtol, loaded.output_kinds, real_tokens(loaded, tensors))
    return ParityInfo(all(d.ok for d in diffs), atol, rtol, diffs, rows, session.get_providers()[0]), actual


# --- shape probes ---------------------------------------------------------------------------------


def resize(
    loaded: LoadedModel, tensors: dict[str, torch.Tensor], batch: int | None = None, sequence: int | None = None
) -> dict[str, torch.Tensor]:
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


def probe_plan(
    loaded: LoadedModel,
    tensors: dict[str, torch.Tensor],
    axes: dict[str, dict[int, str]],
    traced: list[int | None] | None = None,
) -> list[tuple[str, int, int | None]]:
    """(axis varied, batch, sequence) for each probe. Probes prove that a size was not baked in; they need
    not be big (PyTorch runs each one too, and on a large model the full sample is seconds per run).

    With `traced` ([batch, sequence] the exporter traced, ExportInfo.traced): each probe changes one axis
    from the traced size: batch 1 and 3, a longer and a shorter sequence; the sample's own size (parity)
    changes both. Without it, around the sample: batch 1, another small batch, a longer and a shorter
    sequence (the traced batch avoided)."""
    batch = next(iter(tensors.values())).shape[0]
    seq_inputs = [n for n, a in axes.items() if 1 in a]
    seq = tensors[seq_inputs[0]].shape[1] if seq_inputs else None
    batch_dynamic = any(0 in a for a in axes.values())
    if traced is not None:
        tb, ts = traced[0] or batch, (traced[1] if seq is not None else None) or seq
        return _plan(loaded, tb, ts, batch_dynamic, (tb,))
    first = [("batch", 1, seq)] if batch_dynamic and batch != 1 else []
    avoid = (batch, 2 if batch == 1 else batch)  # a 1-row sample is traced with 2 rows (example.trace_inputs)
    return first + _around_sample(loaded, batch, seq, batch_dynamic, avoid)


def _plan(loaded, tb: int, ts: int | None, batch_dynamic: bool, avoid) -> list[tuple[str, int, int | None]]:
    plan: list[tuple[str, int, int | None]] = []
    if batch_dynamic:
        plan += [("batch", b, ts) for b in (1, next(b for b in (3, 4, 5) if b not in avoid)) if b != tb]
    return plan + _sequence_probes(loaded, ts, tb, tb)


def _sequence_probes(loaded, seq: int | None, longer_rows: int, shorter_rows: int) -> list[tuple[str, int, int | None]]:
    """A sequence SEQ_PROBE_STEP tokens longer (half as long past the model's positions), and one 2 shorter."""
    if seq is None:
        return []
    longer = seq + SEQ_PROBE_STEP
    plan: list[tuple[str, int, int | None]] = [
        ("sequence", longer_rows, longer if longer <= _max_positions(loaded) else max(2, seq // 2))
    ]
    return plan + ([("sequence", shorter_rows, max(2, seq - 2))] if seq > 2 else [])


def _around_sample(
    loaded, batch: int, seq: int | None, batch_dynamic: bool, avoid
) -> list[tuple[str, int, int | None]]:
    plan: list[tuple[str, int, int | None]] = []
    if batch_dynamic:
        plan.append(("batch", next(b for b in (2, 3, 4) if b not in avoid), seq))
    return plan + _sequence_probes(loaded, seq, min(batch, 2), 1)


def probe_inputs(
    loaded: LoadedModel,
    tensors: dict[str, torch.Tensor],
    axes: dict[str, dict[int, str]],
    traced: list[int | None] | None = None,
) -> list[tuple[str, int, dict[str, torch.Tensor]]]:
    """(axis varied, batch, the inputs) of each probe in probe_plan."""
    return [
        (axis, b, resize(loaded, tensors, batch=b, sequence=s if axis == "sequence" or traced is not None else None))
        for axis, b, s in probe_plan(loaded, tensors, axes, traced)
    ]


def references(loaded: LoadedModel, tensors: dict[str, torch.Tensor], axes, traced) -> None:
    """PyTorch's outputs for the sample and every probe, computed ahead (into `loaded`'s cached_reference;
    e.g. beside the export): a size PyTorch fails at is left for parity / probes to meet and report."""
    with torch.no_grad():  # grad mode is per thread
        for inputs in [tensors] + [i for _, _, i in (probe_inputs(loaded, tensors, axes, traced) if axes else [])]:
            try:
                torch_outputs(loaded, inputs)
            except Exception:  # noqa: BLE001, S112 - met again, and reported, where the check runs it
                continue


def _fixed_dims(session: ort.InferenceSession, axes: dict[str, dict[int, str]]) -> list[tuple[str, str]]:
    """(axis name, message) for each axis the user asked to be dynamic but the graph declares fixed."""
    problems = []
    for i in session.get_inputs():
        for ax, sym in axes.get(i.name, {}).items():
            if ax < len(i.shape) and isinstance(i.shape[ax], int):
                problems.append((sym, f"input {i.name!r} axis {ax} ({sym}) is fixed to {i.shape[ax]} in the graph"))
    return problems


def probes(
    loaded: LoadedModel,
    session: ort.InferenceSession,
    tensors: dict[str, torch.Tensor],
    axes: dict[str, dict[int, str]],
    atol: float,
    rtol: float,
    judge=None,
    traced: list[int | None] | None = None,
) -> DynamicInfo:
    """Run PyTorch and ORT at other sizes (probe_plan; `traced`: the size the exporter traced); a baked
    dimension fails naming the input and axis.

    judge(expected, actual, mask) -> list[OutputDiff]: the verdict rule (default: `compare` with atol / rtol;
    a variant passes its own, e.g. the cosine rule for int8 embeddings)."""
    from studio.checks.runtime import run

    requested = {n: [a[k] for k in sorted(a)] for n, a in axes.items()}
    if not axes:
        return DynamicInfo(ok=None, probes=[], requested=requested)
    fixed = _fixed_dims(session, axes)
    results: list[Probe] = []
    for axis, b, inputs in probe_inputs(loaded, tensors, axes, traced):
        seq_used = next((t.shape[1] for n, t in inputs.items() if 1 in axes.get(n, {})), None)
        try:
            expected = torch_outputs(loaded, inputs)
        except Exception as e:  # the PyTorch model itself cannot run at this size: not an export fault
            results.append(
                Probe(b, seq_used, True, None, f"skipped: PyTorch itself fails at this size ({e})"[:300], axis)
            )
            continue
        try:
            actual = run(session, to_numpy(inputs))
        except Exception as e:
            where = "; ".join(m for sym, m in fixed if sym == axis) or f"the {axis} axis is not really dynamic"
            results.append(Probe(b, seq_used, False, None, f"{where}: ONNX Runtime failed: {first_line(e)}", axis))
            continue
        mask = real_tokens(loaded, inputs)
        diffs = (
            judge(expected, actual, mask)
            if judge is not None
            else compare(expected, actual, atol, rtol, loaded.output_kinds, mask)
        )
        worst = worst_diff(diffs) or 0.0
        bad = [d for d in diffs if not d.ok]
        at = f"{axis} {b if axis == 'batch' else seq_used}"
        nonfinite_bad = [d for d in bad if d.nonfinite_rows]
        if nonfinite_bad:  # a NaN / inf is not a baked dimension: say what it is
            msg = "non-finite output at " + at + ": " + "; ".join(f"{d.name}: {d.note}" for d in nonfinite_bad)
            results.append(Probe(b, seq_used, False, worst, msg[:600], axis))
        elif bad:
            msg = (
                f"{', '.join(d.name for d in bad)} differ{'s' if len(bad) == 1 else ''} from PyTorch at "
                f"{at} (max abs diff {worst:.3g}): a {axis} size traced into the graph (a constant shape), or "
                "precision this file loses at this size (compare with the sample's difference)"
            )
            results.append(Probe(b, seq_used, False, worst, msg, axis))
        else:
            alike = sum(d.same_nonfinite for d in diffs)
            results.append(
                Probe(
                    b,
                    seq_used,
                    True,
                    worst,
                    "ok" + (f" ({alike} value(s) non-finite alike in both runtimes)" if alike else ""),
                    axis,
                )
            )
    for sym, problem in fixed:  # a fixed dimension is a failure even when no probe reached it
        if not any(problem in p.message for p in results):
            results.append(Probe(0, None, False, None, problem, sym))
    return DynamicInfo(ok=all(p.ok for p in results), probes=results, requested=requested)
