"""Where ONNX Runtime leaves PyTorch: the first value of model.onnx that differs from the PyTorch module it
came from, on the rows that fail.

How. PyTorch runs the export wrapper once with a forward hook on every module, keeping each call's
output tensors. The ONNX file is read without its weights and each node is tied to the module call it came
from: the TorchScript exporter names nodes by scope (`/model/encoder/layer.0/attention/self/MatMul`, a
repeated call gets `act_1`), the new exporter records the module stack in the node's metadata
(`pkg.torch.onnx.name_scopes`: `['', 'model', 'model.encoder', ..., fx node]`). The values a module call's
nodes hand to the rest of the graph (its exits) are made extra outputs of a copy of the file, which ONNX
Runtime runs on the same rows, in chunks, in graph order, until the first value that differs has been found
with a few after it, or the budget (values, seconds) is spent; the result says how far it got. A module
output is matched to the exit of the same shape and dtype produced last. A value differs when an element
fails numpy's allclose rule with the parity tolerances; a NaN / inf in one runtime only is a difference of
unknown size (NaN), never a number.

Why not `torch.onnx.verification.verify_onnx_program(program, args, compare_intermediates=True)` (torch
2.13)? It compares per fx node, but needs the in-memory `ONNXProgram` (the studio keeps only the file,
which it rewrites and annotates after export, and it only exists for the new exporter), and it runs the
whole model in ONNX Runtime once per value (`ONNXProgram.compute_values`): unbounded on a real model; and its
reference is torch.export's program, not the eager module, so what tracing changed agrees there.
Here one ONNX Runtime run serves a chunk of values, and the file checked is the file shipped.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from studio.checks import runtime
from studio.checks._scopes import (
    MAX_BYTES,
    WRAPPER,
    Scope,
    exits_and_entries,
    exporter_of,
    scopes_of,
    torch_calls,
)
from studio.checks.parity import nonfinite
from studio.errors import first_line
from studio.report.divergence import Divergence, Site, per_node, summary
from studio.sources.base import LoadedModel
from studio.sources.wrap import wrap
from studio.spec import LocateOptions, default

FOLLOW = 3  # diverging values listed after the first one
AGREEING = 3  # agreeing values listed before it
MAX_VALUES = 2000  # values compared at most (the node budget)
CHUNK_VALUES = 256  # extra graph outputs per ONNX Runtime run
CHUNK_BYTES = 256 * 1024**2  # ... and their PyTorch size, per run
TIME_BUDGET_S = 120.0
MAX_ROWS = 8  # failing rows the locator runs on
REL_FLOOR = 1e-6


# --- ONNX Runtime: the chosen values as extra graph outputs ----------------------------------------------


def onnx_values(
    model_path: Path,
    model: onnx.ModelProto,
    values: list[str],
    feeds: dict[str, np.ndarray],
    threads: int | None = None,
    optimization: str = "all",
) -> dict[str, np.ndarray]:
    """Run a copy of `model` (read without its weights) whose outputs are its own plus `values`. The copy
    lies beside `model_path` when the weights are external (ORT finds them relative to the file), else in a
    temporary folder; it is removed afterwards."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    have = {o.name for o in copy.graph.output}
    for v in values:
        if v not in have:
            copy.graph.output.append(onnx.ValueInfoProto(name=v))  # ORT infers the type
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    folder = Path(model_path).parent if external else Path(tempfile.mkdtemp(prefix="studio-locate-"))
    tmp = folder / f".{Path(model_path).stem}.locate-{uuid.uuid4().hex[:8]}.onnx"
    try:
        onnx.save(copy, str(tmp))
        session = runtime.cpu_session(tmp, threads, optimization, arena=False)
        return runtime.run(session, feeds)
    finally:
        tmp.unlink(missing_ok=True)
        if not external:
            shutil.rmtree(folder, ignore_errors=True)


def compare_values(e: np.ndarray, a: np.ndarray, atol: float, rtol: float) -> tuple[float, float, bool]:
    """(max abs diff, max rel diff, allclose verdict) over the elements finite in both; a value non-finite in
    one runtime only (or NaN in one, inf in the other) makes the difference NaN and the verdict False."""
    e64, a64 = e.astype(np.float64), a.astype(np.float64)
    nf = nonfinite(e64, a64)
    ev, av = e64[nf["comparable"]], a64[nf["comparable"]]
    absd = np.abs(av - ev)
    if nf["disagree"].any():
        return float("nan"), float("nan"), False
    if not absd.size:
        return 0.0, 0.0, True
    rel = absd / np.maximum(np.abs(ev), REL_FLOOR)
    return float(absd.max()), float(rel.max()), bool(np.all(absd <= atol + rtol * np.abs(ev)))


# --- the locator --------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """What can be compared: per usable scope, its module call's tensors and its exits."""

    model: onnx.ModelProto
    kind: str
    scopes: dict[str, Scope]
    exits: dict[str, list[str]]
    entries: dict[str, list[str]]
    producer: dict[str, int]
    expected: dict[str, list[np.ndarray]]  # scope key -> the call's output tensors
    order: list[str]  # scope keys, by their last exit in graph order
    types: dict[str, str]  # wrapper module path -> class name


def _plan(model: onnx.ModelProto, wrapper: torch.nn.Module, args, max_bytes: int):
    kind = exporter_of(model)
    named = dict(wrapper.named_modules())
    modules = {n for n in named if n}
    scopes, chains = scopes_of(model, kind, modules)
    exits, entries, producer = exits_and_entries(model, scopes, chains)
    wanted = {s.module for s in scopes.values()}
    calls, counts, cut, final = torch_calls(wrapper, args, wanted, max_bytes)
    if kind == "dynamo":
        _split_shared(scopes, exits, entries, counts)
    expected = {}
    for key, sc in scopes.items():
        recorded = calls.get(sc.module, [])
        if sc.call < len(recorded) and recorded[sc.call] and exits[key]:
            expected[key] = recorded[sc.call]
    order = sorted(expected, key=lambda k: (producer[exits[k][-1]], -scopes[k].depth))
    types = {n: type(m).__name__ for n, m in named.items()}
    return _Plan(model, kind, scopes, exits, entries, producer, expected, order, types), cut, final


def _split_shared(scopes: dict[str, Scope], exits, entries, counts: dict[str, int]) -> None:
    """The new exporter gives every call of a module one scope: make one key per call (`path#k`), sharing
    the exits (`_pair` tells the calls apart by graph order); what enters which call is not known."""
    for key, sc in list(scopes.items()):
        n = counts.get(sc.module, 0)
        if n > 1:
            del scopes[key]
            for k in range(n):
                scopes[f"{key}#{k}"] = Scope(sc.module, k, sc.nodes, sc.depth, shared=n)
                exits[f"{key}#{k}"], entries[f"{key}#{k}"] = exits[key], []


def _chunks(plan: _Plan, max_values: int, chunk_values: int, chunk_bytes: int):
    """Scope keys in runs of at most chunk_values extra outputs / chunk_bytes of tensors; stops at max_values."""
    chunk: list[str] = []
    values: set[str] = set()
    size = total = 0
    for key in plan.order:
        new = [v for v in plan.exits[key] if v not in values]
        nbytes = sum(t.nbytes for t in plan.expected[key])
        if chunk and (len(values) + len(new) > chunk_values or size + nbytes > chunk_bytes):
            yield chunk, sorted(values)
            chunk, values, size = [], set(), 0
            new = list(plan.exits[key])
        if total + len(new) > max_values:
            break
        chunk.append(key)
        values.update(new)
        size += nbytes
        total += len(new)
    if chunk:
        yield chunk, sorted(values)


def _pair(plan: _Plan, key: str, got: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """Each of the call's tensors with the exit of the same shape and dtype kind produced last (not used twice);
    m tensors of one shape and kind (a rotary embedding's cos, sin) take the last m such exits, in order.
    A scope shared by n calls: the k-th call takes the k-th such exit in graph order, when there are exactly n."""
    sc = plan.scopes[key]
    used: set[str] = set()
    pairs = []
    alike = lambda a, b: a.shape == b.shape and _kind(a.dtype) == _kind(b.dtype)  # noqa: E731
    tensors = plan.expected[key]
    for i, t in enumerate(tensors):
        fits = [v for v in plan.exits[key] if isinstance(got.get(v), np.ndarray) and alike(got[v], t)]
        if sc.shared > 1:
            fits = [fits[sc.call]] if len(fits) == sc.shared and fits[sc.call] not in used else []
        else:
            same = [u for u in tensors if alike(u, t)]
            m, j = len(same), sum(1 for u in tensors[:i] if alike(u, t))
            fits = [fits[len(fits) - m + j]] if len(fits) >= m else [v for v in fits if v not in used]
        if fits:
            used.add(fits[-1])
            pairs.append((fits[-1], t))
    return pairs


def _kind(dtype: np.dtype) -> str:
    return "b" if dtype.kind == "b" else "f" if dtype.kind in "fc" else "i"


def _site(plan: _Plan, key: str, value: str, e: np.ndarray, a: np.ndarray, atol: float, rtol: float) -> Site:
    sc = plan.scopes[key]
    node = plan.model.graph.node[plan.producer[value]]
    max_abs, max_rel, ok = compare_values(e, a, atol, rtol)
    module = (
        sc.module[len(WRAPPER) + 1 :]
        if sc.module.startswith(WRAPPER + ".")
        else ""
        if sc.module == WRAPPER
        else sc.module
    )
    return Site(
        value,
        node.name or value,
        node.op_type,
        module,
        plan.types.get(sc.module, ""),
        sc.call,
        list(e.shape),
        max_abs,
        max_rel,
        None,
        ok,
        plan.producer[value],
    )


def _inputs_diff(plan: _Plan, key: str, diffs: dict[str, float], graph_inputs: set[str]) -> float | None:
    """The largest difference among the values entering the call that are known: graph inputs (the same
    feeds in both runtimes: 0) and values compared; NaN when one of them is NaN; None when none is known."""
    known = [0.0 if v in graph_inputs else diffs[v] for v in plan.entries[key] if v in graph_inputs or v in diffs]
    if not known:
        return None
    return float("nan") if any(math.isnan(d) for d in known) else max(known)


def _select(sites: list[tuple[Site, int]], div: Divergence, follow: int, agreeing: int) -> None:
    """One site per value (the innermost module: the deepest scope), in graph order; the first that differs,
    the next few, and the last ones before it that agree. `sites`: (site, scope depth)."""
    best: dict[str, tuple[Site, int]] = {}
    for s, depth in sites:
        if s.value not in best or depth > best[s.value][1]:
            best[s.value] = (s, depth)
    ordered = sorted((s for s, _ in best.values()), key=lambda s: s.position)
    div.per_node = per_node(ordered)
    bad = [s for s in ordered if not s.ok]
    div.found = bool(bad)
    if bad:
        div.first = bad[0]
        div.following = bad[1 : 1 + follow]
        div.agreeing = [s for s in ordered if s.ok and s.position < bad[0].position][-agreeing:] if agreeing else []
    else:
        div.agreeing = [s for s in ordered if s.ok][-agreeing:] if agreeing else []


def locate(
    loaded: LoadedModel,
    model_path: str | Path,
    tensors: dict[str, torch.Tensor],
    *,
    atol: float | None = None,
    rtol: float | None = None,
    rows: list[int] | None = None,
    threads: int | None = None,
    time_budget_s: float = TIME_BUDGET_S,
    max_values: int = MAX_VALUES,
    chunk_values: int = CHUNK_VALUES,
    chunk_bytes: int = CHUNK_BYTES,
    max_bytes: int = MAX_BYTES,
    follow: int = FOLLOW,
    agreeing: int = AGREEING,
    optimization: str = "all",
    wrapper: torch.nn.Module | None = None,
) -> Divergence:
    """Find the first value of `model_path` where ONNX Runtime leaves PyTorch on `tensors` (the rows `rows`,
    0-based; all by default). `loaded` is the model the file was exported from. See the module's text.
    `wrapper`: the module the file was exported from when it is not `studio.sources.wrap`'s (it takes the
    tensors in `tensors`' order and holds the model as `self.model`; a decoder's DecoderWithPast)."""
    started = time.perf_counter()
    atol = default("atol") if atol is None else atol
    rtol = default("rtol") if rtol is None else rtol
    if rows is not None:
        tensors = {n: t[list(rows)] for n, t in tensors.items()}
    batch = next(iter(tensors.values())).shape[0]
    names = list(tensors)
    wrapper = wrap(loaded, names) if wrapper is None else wrapper.eval()
    model = onnx.load(str(model_path), load_external_data=False)
    plan, cut, final = _plan(model, wrapper, tuple(tensors[n] for n in names), max_bytes)
    div = Divergence(
        False,
        plan.kind,
        None,
        nodes=len(model.graph.node),
        candidates=len(plan.order),
        rows=list(rows) if rows is not None else list(range(batch)),
        atol=atol,
        rtol=rtol,
    )
    feeds = {n: t.detach().cpu().numpy() for n, t in tensors.items()}
    chunks = list(_chunks(plan, max_values, chunk_values, chunk_bytes))
    sites = _run_chunks(
        plan, Path(model_path), chunks, feeds, final, div, started, time_budget_s, threads, optimization, follow
    )
    _select([(s, plan.scopes[k].depth) for s, k in sites], div, follow, agreeing)
    planned = sum(len(c) for c, _ in chunks)
    if div.stopped is None and planned < len(plan.order) and not div.found:
        div.stopped = f"value budget ({max_values} values) reached"
    div.complete = div.stopped is None
    if cut:
        div.complete = False
        div.stopped = "; ".join(filter(None, [div.stopped, f"PyTorch outputs past {max_bytes} bytes not kept"]))
    div.seconds = round(time.perf_counter() - started, 2)
    div.message = summary(div)
    return div


def _run_chunks(
    plan: _Plan,
    model_path: Path,
    chunks,
    feeds,
    final,
    div: Divergence,
    started: float,
    time_budget_s: float,
    threads,
    optimization: str,
    follow: int,
) -> list[tuple[Site, str]]:
    """Run the chunks in order and compare each module call's tensors; stop once the first diverging value
    and `follow` more are found, or the time is spent, or ONNX Runtime fails. Returns (site, scope key)s."""
    sites: list[tuple[Site, str]] = []
    diffs: dict[str, float] = {}
    done: set[str] = set()
    graph_inputs = {i.name for i in plan.model.graph.input}
    out_names = [o.name for o in plan.model.graph.output]
    for ran, (chunk, values) in enumerate(chunks):
        if ran and time.perf_counter() - started > time_budget_s:  # the first run always happens
            div.stopped = f"time budget ({time_budget_s:g} s) spent"
            break
        try:
            got = onnx_values(model_path, plan.model, values, feeds, threads, optimization)
        except Exception as e:  # noqa: BLE001 - ORT's words go into the result (a baked size, a bad file)
            div.stopped = f"ONNX Runtime failed: {first_line(e, with_type=True)}"
            break
        if div.outputs_max_abs_diff is None:
            div.outputs_max_abs_diff = _outputs_diff(final, [got.get(n) for n in out_names], div.atol, div.rtol)
        for key in chunk:
            for value, expected in _pair(plan, key, got):
                site = _site(plan, key, value, expected, got[value], div.atol, div.rtol)
                sites.append((site, key))
                diffs[value] = site.max_abs_diff
                done.add(key)
        div.compared = len(done)
        div.reached = max([div.reached] + [plan.producer[v] + 1 for v in values])
        if len({s.value for s, _ in sites if not s.ok}) > follow:
            break
    for site, key in sites:
        site.inputs_max_abs_diff = _inputs_diff(plan, key, diffs, graph_inputs)
    return sites


def _outputs_diff(expected: list[np.ndarray], actual: list, atol: float, rtol: float) -> float | None:
    worst = 0.0
    for e, a in zip(expected, actual):
        if a is None or a.shape != e.shape:
            return None
        d = compare_values(e, a, atol, rtol)[0]
        if math.isnan(d):
            return float("nan")
        worst = max(worst, d)
    return worst


# --- the pipeline's hook -------------------------------------------------------------------------------


def failing_rows(
    loaded: LoadedModel,
    model_path: str | Path,
    tensors: dict[str, torch.Tensor],
    atol: float,
    rtol: float,
    onnx_outputs: dict[str, np.ndarray] | None = None,
    limit: int = MAX_ROWS,
) -> list[int]:
    """0-based rows where some output fails the parity rule (at most `limit`); the first `limit` rows when
    none does. `onnx_outputs`: ONNX Runtime's outputs on `tensors` when the caller has them (parity's)."""
    from studio.checks.parity import to_numpy, torch_outputs

    expected = torch_outputs(loaded, tensors)
    if onnx_outputs is None:
        onnx_outputs = runtime.run(runtime.cpu_session(model_path, arena=False), to_numpy(tensors))
    batch = next(iter(tensors.values())).shape[0]
    bad = []
    for row in range(batch):
        for name, e in expected.items():
            a = onnx_outputs.get(name)
            if a is None or a.shape != e.shape or not compare_values(e[row], a[row], atol, rtol)[2]:
                bad.append(row)
                break
        if len(bad) >= limit:
            break
    return bad or list(range(min(batch, limit)))


def _failing_probe(dynamic) -> Any:
    """The first shape probe that ran in both runtimes and differs (a probe ORT could not run has nothing to
    compare), or None."""
    for p in getattr(dynamic, "probes", None) or []:
        if not p.ok and p.max_abs_diff is not None and p.batch:
            return p
    return None


def for_report(
    loaded: LoadedModel,
    model_path: str | Path,
    tensors: dict[str, torch.Tensor],
    spec: LocateOptions | None = None,
    *,
    parity=None,
    dynamic=None,
    onnx_outputs: dict[str, np.ndarray] | None = None,
    requested: bool = False,
    **budget: Any,
) -> Divergence | None:
    """What the pipeline calls after parity and the shape probes: locate when parity failed (on its failing
    rows), else when a probe differs (on that probe's inputs), else when `requested` (on the sample); None
    when none of these holds. Never raises for the locator's own failure: the Divergence says what failed.
    `budget`: locate()'s keywords (time_budget_s, max_values, ...)."""
    atol = spec.atol if spec is not None else default("atol")
    rtol = spec.rtol if spec is not None else default("rtol")
    probe = _failing_probe(dynamic)
    if parity is not None and not parity.ok:
        trigger, feeds, outputs = "parity", tensors, onnx_outputs
    elif probe is not None:
        from studio.checks.parity import resize

        seq = probe.sequence if probe.changed == "sequence" else None
        size = f"{probe.batch}x{probe.sequence}" if probe.sequence else f"{probe.batch}"
        trigger, feeds, outputs = (
            f"probe {probe.changed} {size}",
            resize(loaded, tensors, batch=probe.batch, sequence=seq),
            None,
        )
    elif requested:
        trigger, feeds, outputs = "requested", tensors, onnx_outputs
    else:
        return None
    started = time.perf_counter()
    try:
        rows = failing_rows(loaded, model_path, feeds, atol, rtol, outputs)
        div = locate(
            loaded,
            model_path,
            feeds,
            atol=atol,
            rtol=rtol,
            rows=rows,
            threads=spec.threads if spec is not None else None,
            **budget,
        )
    except Exception as e:  # noqa: BLE001 - the conversion's verdict stands; the report says the locator failed
        div = Divergence(
            False,
            "unknown",
            None,
            atol=atol,
            rtol=rtol,
            stopped=first_line(e, with_type=True),
            seconds=round(time.perf_counter() - started, 2),
        )
        div.message = f"the divergence locator failed: {div.stopped}"
    div.trigger = trigger
    return div
