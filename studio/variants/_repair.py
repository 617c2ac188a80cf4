"""Repairing a variant that fails its verdict: the nodes that hurt most are kept in float, and the variant is
rebuilt and checked again, until it passes or the budget is spent (issue 28 §1).

Which nodes hurt: each candidate node (a quantized matrix product for int8, any node for fp16) is scored by how
much error it adds on the user's own rows: the relative error (L2 norm of variant - fp32 over the norm of fp32,
over the elements finite in fp32) of the values it writes, minus that of the activations it reads. Both files
are run on the sample with those values added as graph outputs (`Values`), a chunk at a time so memory holds a
few of them. A node downstream of a bad one reads the error it writes and scores low; the bad one reads clean
values and writes broken ones. A node that writes a non-finite value where fp32 is finite, from finite inputs,
scores infinite.

fp16 has a first step of its own, from the fp32 run alone: a value beyond fp16's range (|v| > 65504) is inf in
fp16, so the node writing it and every node reading it stay fp32 (`fp16_keep`), and the fp16 verdict itself
fails while such a value is written or read in fp16 (`fp16_overflow`): ONNX Runtime's CPU provider has no fp16
kernel for most operators and runs them in fp32 with the casts between them removed (measured: the optimized
CPU graph of an fp16 Gemm -> LayerNorm -> Gemm holds no fp16 operator), so a CPU parity check does not see an
overflow that CUDA turns into inf.

Rounds: the worst 1, 1, 2, 4, 8, 16 nodes are added to those kept in float (STEPS), each round re-scored on the
file as rebuilt; at most MAX_ROUNDS rounds and MAX_SECONDS (no round starts after that), and it gives up after
MAX_STALE rounds in a row that do no better (bert-base under a tight bound: 6 rounds, 198 s, none better). A repair that cannot
pass leaves the best file it reached (`badness`: the closest verdict) and says so; none better: the file as built.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from studio.checks import runtime
from studio.errors import first_line
from studio.report.model import VariantInfo, worst_diff
from studio.variants._builders import Candidate

FP16_MAX = 65504.0
MAX_ROUNDS = 6
MAX_SECONDS = 300.0
STEPS = (1, 1, 2, 4, 8, 16)  # nodes added to the kept ones in each round
MAX_STALE = 3  # rounds in a row without a better verdict before the repair gives up
CHUNK = 32  # values fetched per run of a file
SCORES_SHOWN = 5  # scores per round in the report


# --- intermediate values ----------------------------------------------------------------------------


class Values:
    """One ONNX file's intermediate values on the sample: its graph with every node output a graph output,
    run a chunk of names at a time (ONNX Runtime computes only what the requested outputs need)."""

    def __init__(self, path: Path, feeds: dict[str, np.ndarray], threads: int):
        model = onnx.load(str(path), load_external_data=False)
        self.produced = {o for n in model.graph.node for o in n.output if o}
        self.producer = {o: n for n in model.graph.node for o in n.output if o}
        self.graph = model.graph
        have = {o.name for o in model.graph.output}
        for name in sorted(self.produced - have):
            model.graph.output.append(onnx.ValueInfoProto(name=name))
        tmp = path.with_name(f".{path.stem}.values.onnx")  # beside it: its external data keeps its name
        try:
            onnx.save(model, str(tmp))
            self.session = runtime.cpu_session(tmp, threads, arena=False)
        finally:
            tmp.unlink(missing_ok=True)
        inputs = [i.name for i in self.session.get_inputs()]
        self.feeds = {n: feeds[n] for n in inputs}

    def chunks(self, names: list[str]) -> Iterator[dict[str, np.ndarray]]:
        wanted = [n for n in names if n in self.produced]
        for k in range(0, len(wanted), CHUNK):
            part = wanted[k : k + CHUNK]
            yield dict(zip(part, self.session.run(part, self.feeds)))


def relative_error(f: np.ndarray, q: np.ndarray) -> float:
    """||q - f|| / ||f|| over the elements finite in f; inf when q is not finite where f is, or shapes differ."""
    if f.shape != q.shape or not np.issubdtype(f.dtype, np.floating):
        return 0.0 if f.shape == q.shape else math.inf
    f64, q64 = f.astype(np.float64), q.astype(np.float64)
    fin = np.isfinite(f64)
    if not np.isfinite(q64[fin]).all():
        return math.inf
    d, n = float(np.linalg.norm((q64 - f64)[fin])), float(np.linalg.norm(f64[fin]))
    return d / n if n > 0 else (0.0 if d == 0 else math.inf)


def errors(fp32: Values, variant: Values, names: list[str]) -> dict[str, float]:
    """relative_error of each value found in both files."""
    both = [n for n in dict.fromkeys(names) if n in fp32.produced and n in variant.produced]
    out: dict[str, float] = {}
    for k in range(0, len(both), CHUNK):
        part = both[k : k + CHUNK]
        f = next(fp32.chunks(part))
        q = next(variant.chunks(part))
        out.update({n: relative_error(f[n], q[n]) for n in part})
    return out


def rank(fp32: Values, variant: Values, candidates: list[Candidate], kept: set[str]) -> list[tuple[str, float]]:
    """(node, score) for every candidate not kept yet, worst first: the error it writes minus the error it reads."""
    todo = [c for c in candidates if c.name not in kept]
    err = errors(fp32, variant, [v for c in todo for v in (*c.inputs, *c.outputs)])
    scores = []
    for c in todo:
        wrote = max((err[v] for v in c.outputs if v in err), default=None)
        if wrote is None:
            continue
        read = max((err[v] for v in c.inputs if v in err), default=0.0)
        score = 0.0 if math.isinf(wrote) and math.isinf(read) else wrote - read
        scores.append((c.name, score))
    return sorted(scores, key=lambda s: -s[1])


# --- fp16 range --------------------------------------------------------------------------------------


def fp32_ranges(fp32: Values, path: Path | None = None) -> dict[str, float]:
    """Largest |value| of every float value the fp32 file writes on the sample (a value non-finite in fp32 is
    left out: not fp16's doing). With `path` (the file `fp32` was opened on), one run of a copy that reduces each
    value to its largest |value| in the graph (Abs, ReduceMax), so a large model is not run once per chunk of
    values; else, or if that copy cannot run, the values themselves, a chunk at a time."""
    floats = [o.name for o in fp32.session.get_outputs() if o.name in fp32.produced and o.type in FLOAT_TYPES]
    if path is not None:
        try:
            return _reduced_ranges(path, fp32, floats)
        except Exception:  # noqa: BLE001, S110 - the slower way below measures the same
            pass
    out: dict[str, float] = {}
    for got in fp32.chunks(floats):
        for name, a in got.items():
            if a.size:
                top = float(np.abs(a).max())
                if math.isfinite(top):
                    out[name] = top
    return out


FLOAT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(double)", "tensor(bfloat16)")


def _reduced_ranges(path: Path, fp32: Values, floats: list[str]) -> dict[str, float]:
    model = onnx.load(str(path), load_external_data=False)
    del model.graph.output[:]
    names = {}
    for k, v in enumerate(floats):
        top = f"__studio_absmax_{k}"
        model.graph.node.extend(
            [
                onnx.helper.make_node("Abs", [v], [top + "_abs"]),
                onnx.helper.make_node("ReduceMax", [top + "_abs"], [top], keepdims=0),
            ]
        )
        model.graph.output.append(onnx.ValueInfoProto(name=top))
        names[top] = v
    tmp = path.with_name(f".{path.stem}.ranges.onnx")
    try:
        onnx.save(model, str(tmp))
        session = runtime.cpu_session(tmp, None, arena=False)
    finally:
        tmp.unlink(missing_ok=True)
    got = session.run(list(names), fp32.feeds)
    out = {}
    for top, value in zip(names, got):
        x = float(np.asarray(value, np.float64).max()) if np.size(value) else 0.0
        if math.isfinite(x):
            out[names[top]] = x
    return out


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    return readers


def fp16_overflow(graph: onnx.GraphProto, ranges: dict[str, float], kept: set[str]) -> list[tuple[str, float, str]]:
    """(value, largest |value| in fp32, node writing it) for each value beyond fp16's range that the fp16 file
    would hold in fp16: written by a node not kept in fp32, or read by one (a cast to fp16 in between)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    fp32_ops = set(DEFAULT_OP_BLOCK_LIST)
    readers = _consumers(graph)
    writer = {o: n for n in graph.node for o in n.output}
    bad = []
    for name, top in ranges.items():
        if top <= FP16_MAX or name not in writer:
            continue
        nodes = [writer[name], *readers.get(name, [])]
        if any(n.name not in kept and n.op_type not in fp32_ops for n in nodes):
            bad.append((name, top, writer[name].name))
    return sorted(bad, key=lambda b: -b[1])


def fp16_keep(graph: onnx.GraphProto, overflow: list[tuple[str, float, str]]) -> list[str]:
    """The nodes that must stay fp32 for these values to stay finite: the writer and every reader of each, and the
    Constant nodes those read (a Constant is converted to fp16, clamped to its range, unless kept too)."""
    readers = _consumers(graph)
    writer = {o: n for n in graph.node for o in n.output}
    keep: dict[str, None] = {}
    for name, _top, _node in overflow:
        for n in [writer[name], *readers.get(name, [])]:
            keep[n.name] = None
            for i in n.input:
                if i in writer and writer[i].op_type == "Constant":
                    keep[writer[i].name] = None
    return [k for k in keep if k]


# --- the loop ----------------------------------------------------------------------------------------


@dataclass
class Attempt:
    kept: list[str]
    info: VariantInfo
    target: Any
    round: int = 0  # the round that built it (0: the unrepaired build)


def verdict(info: VariantInfo) -> str:
    """A variant's verdict in one line: PASS, or what failed."""
    if info.ok:
        diffs = info.parity.outputs if info.parity else []
        worst = worst_diff(diffs)
        agree = [d.argmax_agreement for d in diffs if d.argmax_agreement is not None]
        return (
            "PASS"
            + (f" (max abs diff {worst:.3g}" if worst is not None else "")
            + (f", argmax agreement {min(agree):.1%})" if agree else ")" if worst is not None else "")
        )
    rule = (info.tolerance or {}).get("rule")
    text = (info.error or "failed").removeprefix("failed ")
    return text.replace(f" ({rule})", "") if rule else text


def badness(info: VariantInfo) -> tuple[float, ...]:
    """How far from passing (lower is better): passing first, then a non-finite output or an fp16 overflow, then
    the lowest argmax agreement, the lowest cosine, and the largest difference over the sample and the probes.
    Not a count of failing checks: keeping nodes in float rarely turns a check from fail to pass on its own, and a
    file that fails one check less by a hair while differing more would be no better (bert-base under a tight
    bound: measured)."""
    diffs = info.parity.outputs if info.parity else []
    agree = min((d.argmax_agreement for d in diffs if d.argmax_agreement is not None), default=1.0)
    cosine = min((d.min_cosine for d in diffs if d.min_cosine is not None), default=1.0)
    worst = [d.max_abs_diff for d in diffs] + [p.max_abs_diff for p in (info.dynamic.probes if info.dynamic else [])]
    finite = [w for w in worst if w is not None and math.isfinite(w)]
    broken = len(finite) < len([w for w in worst if w is not None]) or "fp16 range" in (info.error or "")
    return (
        0.0 if info.ok else 1.0,
        1.0 if broken else 0.0,
        -agree,
        -(cosine if cosine == cosine else -1.0),
        max(finite, default=0.0) if not broken else math.inf,
    )


@dataclass
class Repair:
    """One variant's repair: how to rebuild it keeping nodes in float, how to check it, how to score nodes."""

    rebuild: Callable[[list[str]], Any]  # kept nodes -> Built (written at the variant's path)
    recheck: Callable[[Any], tuple[VariantInfo, Any]]  # Built -> (fresh VariantInfo, latency target)
    scores: Callable[[Any, set[str]], list[tuple[str, float]]]  # Built, kept -> (node, score), worst first
    first: list[str] = field(default_factory=list)  # kept before any scoring (fp16: the overflowing nodes)
    max_rounds: int = MAX_ROUNDS
    max_seconds: float = MAX_SECONDS


def run(repair: Repair, failed: Attempt, made: Any) -> tuple[Attempt, Any, dict[str, Any]]:
    """Rounds until the variant passes or the budget is spent. Returns the attempt kept (passing, else the
    best; `failed` itself when no round did better: its file is then the caller's to put back), its Built, and
    the report's `repair` dict (VariantInfo.repair)."""
    started = time.perf_counter()
    best, best_made, last = failed, made, failed
    kept: list[str] = []
    rounds: list[dict[str, Any]] = []
    stopped = f"round budget ({repair.max_rounds})"
    for r in range(repair.max_rounds):
        if time.perf_counter() - started > repair.max_seconds:
            stopped = f"time budget ({repair.max_seconds:g} s)"
            break
        if r == 0 and repair.first:
            add, shown = [n for n in repair.first if n not in kept], []
        else:
            scored = repair.scores(made, set(kept))
            shown = scored[:SCORES_SHOWN]
            add = [n for n, s in scored if s > 0][: STEPS[min(len(rounds), len(STEPS) - 1)]]
        if not add:
            stopped = "no node left that adds error"
            break
        kept += add
        try:
            made = repair.rebuild(list(kept))
            info, target = repair.recheck(made)
        except Exception as e:  # noqa: BLE001 - the repair stops; the best file so far is kept
            stopped = f"could not rebuild with {len(kept)} node(s) kept: {first_line(e, with_type=True)}"
            last = Attempt(list(kept), failed.info, None)  # the file at the variant's path is no longer best's
            break
        entry = {
            "kept": add,
            "verdict": verdict(info),
            "scores": [[n, None if math.isinf(s) else round(s, 4)] for n, s in shown],
        }
        rounds.append(entry)
        last = Attempt(list(kept), info, target, len(rounds))
        if badness(info) < badness(best.info):
            best, best_made = last, made
        if info.ok:
            stopped = "passed"
            break
        if len(rounds) - best.round >= MAX_STALE:
            stopped = f"no better in {MAX_STALE} rounds"
            break
    if best is not last and best is not failed:  # could not pass: the best file reached is the one kept
        best_made = repair.rebuild(list(best.kept))
        info, target = repair.recheck(best_made)
        best = Attempt(list(best.kept), info, target, best.round)
    chosen, chosen_made = best, best_made
    report = {
        "tried": True,
        "passed": chosen.info.ok,
        "rounds": len(rounds),
        "kept": list(chosen.kept),
        "before": verdict(failed.info),
        "after": verdict(chosen.info),
        "stopped": stopped,
        "seconds": round(time.perf_counter() - started, 2),
        "size_bytes_before": failed.info.size_bytes,
        "history": rounds,
    }
    return chosen, chosen_made, report
