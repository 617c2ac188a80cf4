"""Where the time goes in the model: ONNX Runtime's own per-node profile of an ONNX file on the sample.

How. A CPU session is built as latency builds its own (runtime.cpu_session: the same threads, all graph
optimisations, the memory arena on) with ONNX Runtime's profiler on (`SessionOptions.enable_profiling`), its
file written inside the conversion's work folder and deleted once read. The sample runs `warmup` times first
(the first call allocates: its events are dropped), then up to `runs` times within `budget_s` (at least once);
a first call that outlasts the budget is the whole profile (`warmup` 0: for a big model one call costs more
than a warm-up would change). Each run's node events (`<node>_kernel_time`: the time the kernel ran) are
those inside that run's `model_run` event. Per node: the median microseconds per run (a run that another
process interrupted does not move it), the mean, the sum over the profiled runs, how many times it ran, its
share of the model's node time (the sum of the medians); the same per op type.

Names. The profile names the nodes of the graph ONNX Runtime runs, after its optimisations: most are the
nodes of the file (constant-folded ones are gone), a fused node often carries the name of the node it grew
from (`X/MatMulScaleFusion/`, `fused X`), and some have a name ORT made (`BiasGelu`, `SkipLayerNormalization`).
`onnx_node` says which node of the file a profiled node stands for, when its name tells; `graph_nodes` holds
the time of the file's nodes (the graph view paints those); `unmapped_share` is the share of the time spent
in nodes whose name names no node of the file.

Measured, never assumed: when the profile cannot be taken (ONNX Runtime cannot open or run the file), the
result holds `error` (why) and no numbers.
"""

from __future__ import annotations

import bisect
import json
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from studio.checks import runtime
from studio.errors import first_line

WARMUP = 1  # untimed runs first: their events are dropped (none when one run outlasts the budget)
RUNS = 20  # profiled runs at most
BUDGET_S = 1.0  # wall time for the profiled runs (at least one runs)
TOP = 15  # nodes listed in `nodes` (every node is in `all_nodes`)
KERNEL = "_kernel_time"
# what ONNX Runtime's fusions add to the name of the node a fused node grew from
_FUSED_PREFIX = "fused "
_FUSION_SUFFIX = re.compile(r"(/[A-Za-z0-9]+Fusion/?)+$")


def profile(
    path: str | Path,
    feeds: Mapping[str, np.ndarray],
    work: str | Path,
    *,
    threads: int | None = None,
    optimization: str = "all",
    warmup: int = WARMUP,
    runs: int = RUNS,
    budget_s: float = BUDGET_S,
    top: int = TOP,
) -> dict[str, Any]:
    """The per-node profile of the ONNX file `path` on `feeds` (graph input name -> array; extra names are
    ignored), or {"file", "error"} when it cannot be taken. The profiler's file lies in `work` while the
    session lives and is deleted after reading. The keys are listed in docs/checks.md."""
    path, work = Path(path), Path(work)
    started = time.perf_counter()
    prefix = work / f".profile-{uuid.uuid4().hex[:8]}"
    written: str | None = None
    try:
        session = runtime.cpu_session(path, threads, optimization, profile_prefix=str(prefix))
        try:
            arrays = runtime.feeds(session, dict(feeds))
            warmup = _runs(session, arrays, warmup, runs, budget_s)
            provider = session.get_providers()[0]
        finally:
            written = session.end_profiling()
        events = json.loads(Path(written).read_text())
        result = summarise(events, _graph_names(path), warmup=warmup, top=top)
        result.update(
            file=path.name,
            provider=provider,
            optimization=optimization,
            threads=threads or runtime.default_threads(),
            feeds={n: list(a.shape) for n, a in arrays.items()},
        )
    except Exception as e:  # noqa: BLE001 - the profile informs, it is no check: the report says why it is missing
        result = {"file": path.name, "error": first_line(e, 400, with_type=True)}
    finally:
        if written:
            Path(written).unlink(missing_ok=True)
        for left in work.glob(prefix.name + "*"):  # a file ORT wrote before failing
            left.unlink(missing_ok=True)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def _runs(session, arrays: dict[str, np.ndarray], warmup: int, runs: int, budget_s: float) -> int:
    """Run the warm-up calls, then up to `runs` calls within `budget_s` (at least one); returns the warm-up
    calls to drop. A first call longer than the budget is the profile alone (0 dropped: a big model's call costs
    more than what a warm-up would change)."""
    clock = time.perf_counter()
    session.run(None, arrays)
    if time.perf_counter() - clock >= budget_s:
        return 0
    for _ in range(max(0, warmup) - 1):
        session.run(None, arrays)
    ran, clock = int(warmup <= 0), time.perf_counter()
    while ran < max(1, runs) and (ran == 0 or time.perf_counter() - clock < budget_s):
        session.run(None, arrays)
        ran += 1
    return max(0, warmup)


def _graph_names(path: Path) -> set[str]:
    """The node names of the file's main graph (read without its weights)."""
    return {n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.name}


def onnx_node(name: str, names: set[str]) -> str | None:
    """The node of the file a profiled node stands for: the same name, or the name ORT's fusion grew it from
    (`fused X`, `X/MatMulScaleFusion/`); None when its name names none (a node ORT named itself)."""
    for candidate in (name, name.removeprefix(_FUSED_PREFIX), _FUSION_SUFFIX.sub("", name)):
        if candidate in names:
            return candidate
    return None


def summarise(events: list[dict[str, Any]], names: set[str], *, warmup: int = 0, top: int = TOP) -> dict[str, Any]:
    """ONNX Runtime's profile events (the JSON list its profiler writes) -> the per-node numbers, the first
    `warmup` runs left out. `names`: the file's node names (for `onnx_nodes`, `graph_nodes`)."""
    model_runs = sorted((e for e in events if e.get("name") == "model_run" and "dur" in e), key=lambda e: e["ts"])
    kept = model_runs[warmup:]
    if not kept:
        raise RuntimeError(f"the profile holds {len(model_runs)} runs, none after the {warmup} warm-up runs")
    starts = [e["ts"] for e in kept]
    count = len(kept)
    nodes: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith(KERNEL):
            continue
        i = bisect.bisect_right(starts, e["ts"]) - 1  # the run it belongs to
        if i < 0 or e["ts"] > kept[i]["ts"] + kept[i]["dur"]:
            continue  # a warm-up run's
        name = e["name"][: -len(KERNEL)]
        n = nodes.get(name)
        if n is None:
            op = e.get("args", {}).get("op_name", "")
            n = nodes[name] = {"name": name, "op_type": op, "per_run": [0.0] * count, "calls": 0}
        n["per_run"][i] += e["dur"]
        n["calls"] += 1
    for n in nodes.values():
        n["us"], n["sum"] = float(np.median(n["per_run"])), float(sum(n["per_run"]))
    total = sum(n["us"] for n in nodes.values())
    share = lambda us: us / total if total else 0.0  # noqa: E731
    ranked = sorted(nodes.values(), key=lambda n: (-n["us"], -n["sum"], n["name"]))
    rows = [
        {
            "name": n["name"],
            "op_type": n["op_type"],
            "us": round(n["us"], 2),
            "mean_us": round(n["sum"] / count, 2),
            "sum_us": round(n["sum"], 2),
            "calls": n["calls"],
            "share": share(n["us"]),
            "onnx_node": onnx_node(n["name"], names),
        }
        for n in ranked
    ]
    ops: dict[str, dict[str, Any]] = {}
    for r in rows:
        o = ops.setdefault(r["op_type"], {"op_type": r["op_type"], "us": 0.0, "nodes": 0})
        o["us"] += r["us"]
        o["nodes"] += 1
    graph_nodes: dict[str, float] = {}
    for r in rows:
        if r["onnx_node"] is not None:
            graph_nodes[r["onnx_node"]] = round(graph_nodes.get(r["onnx_node"], 0.0) + r["us"], 2)
    return {
        "runs": count,
        "warmup": warmup,
        "total_us": round(total, 2),
        "run_us": float(np.median([e["dur"] for e in kept])),
        "nodes": rows[:top],
        "op_types": [
            {"op_type": o["op_type"], "us": round(o["us"], 2), "share": share(o["us"]), "nodes": o["nodes"]}
            for o in sorted(ops.values(), key=lambda o: (-o["us"], o["op_type"]))
        ],
        "all_nodes": {r["name"]: r["us"] for r in rows},
        "graph_nodes": graph_nodes,
        "unmapped_share": sum(r["share"] for r in rows if r["onnx_node"] is None),
        "error": None,
    }


def for_report(
    model_path: str | Path,
    feeds: Mapping[str, np.ndarray],
    work: str | Path,
    variants: Mapping[str, str | Path] | None = None,
    *,
    threads: int | None = None,
    budget_s: float = BUDGET_S,
) -> dict[str, Any]:
    """report.json's `profile`: model.onnx's profile, plus `variants` (file name -> the same for each variant
    file given: name -> path), each with the same run budget. One session at a time: each is released when its
    profile returns (no garbage collection here: it costs 0.2 s a call in a conversion's process)."""
    result = profile(model_path, feeds, work, threads=threads, budget_s=budget_s)
    result["variants"] = {
        name: profile(path, feeds, work, threads=threads, budget_s=budget_s) for name, path in (variants or {}).items()
    }
    return result
