"""--exporter compare: both exporters run, their files are checked and timed side by side, the evidence picks one.

Each exporter writes into its own folder (`compare/<exporter>/model.onnx` inside the build folder) through
`export.attempt`, the step `auto` takes for each exporter. Every usable file then gets the pipeline's checks,
made by the same functions (graph_info.check, graph_info.graph_info, parity.parity, parity.probes) against
one PyTorch reference (`parity.cached_reference`: PyTorch runs once per input set for both files), and the
files are timed on ONNX Runtime CPU side by side (`latency.side_by_side`, the same threads and budget,
alternating rounds), so a drift of the machine's speed does not bias their ratio. `choose` picks:
1. a file that passes every check (checker, parity, probes) before one that does not (fewer failed checks first);
2. then the faster file by ORT CPU p50, when it is more than MARGIN below the other's and faster in every round;
3. otherwise (within the margin, or a timing missing) the new exporter (dynamo).
The winner's file becomes model.onnx; the other usable file is kept beside it as
`candidates/model.<exporter>.onnx` (+ `.data`, its external-data references renamed with it), so the two
exporters' graphs can be seen side by side (the app's graph view); each row's `file` names its file.
"""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from studio.artifacts import remove_model
from studio.checks import graph_info, runtime
from studio.checks import parity as parity_mod
from studio.errors import ExportError, first_line
from studio.export import exporters as export_mod
from studio.report.model import CandidateRow, Comparison, ExportAttempt, ExportInfo
from studio.sources.base import LoadedModel
from studio.spec import CompareOptions
from studio.timing import latency as latency_mod

COMPARED = export_mod.ATTEMPT_ORDER["compare"]  # ("dynamo", "torchscript")
PREFERRED = "dynamo"  # a tie goes to the new exporter
# The faster file wins on speed only when its ORT CPU p50 is more than MARGIN below the other's AND it is
# faster in every one of ROUNDS alternating rounds. Measured here (2026-12-01, 2 cores, load ~4, 0.2 s budget):
# the demo's model.onnx timed side by side against itself gave p50 ratios 0.76-1.06 over 10 runs, so a margin
# alone does not tell a faster file from noise on a busy machine; a drift hits both files within a round
# alike, so a file that is faster in every round is faster.
MARGIN = 0.10
ROUNDS = 5
FOLDER = "compare"  # inside the build folder; removed once the winner is model.onnx
CANDIDATES = "candidates"  # inside the output folder: the other exporter's file, model.<exporter>.onnx


def export_compared(
    loaded: LoadedModel, reference: LoadedModel, tensors: dict[str, torch.Tensor], spec: CompareOptions, dest: Path
) -> tuple[ExportInfo, Comparison]:
    """Run every exporter, check and time each usable file, move the winner's file to `dest` (model.onnx).

    `loaded` is exported; `reference` (parity.cached_reference(loaded)) is what the files are checked against.
    Raises ExportError (as `auto` would) when no exporter wrote a usable file."""
    start = time.perf_counter()
    prep = export_mod.prepare(loaded, tensors, spec, dest.parent / "diagnostics")
    folder = dest.parent / FOLDER
    rows: list[CandidateRow] = []
    attempts: list[ExportAttempt] = []
    files: dict[str, Path] = {}
    last_error: ExportError | None = None
    try:
        for name in COMPARED:
            path = folder / name / dest.name
            path.parent.mkdir(parents=True, exist_ok=True)
            done, error = export_mod.attempt(prep, name, loaded, spec, path)
            attempts.append(done)
            if done.ok:
                files[name] = path
                rows.append(CandidateRow(name, True, opset=done.opset_written, export_seconds=done.seconds))
            else:
                remove_model(path)
                last_error = error or last_error
                rows.append(
                    CandidateRow(name, False, done.error, done.skipped, done.opset_written, export_seconds=done.seconds)
                )
        export_mod.prune_diagnostics(prep.diag_dir, attempts)
        if not files:
            raise export_mod.failure(attempts, last_error, spec.opset)
        for row in rows:
            if row.exported:
                check_candidate(row, reference, tensors, files[row.exporter], prep.axes, spec)
        time_side_by_side(rows, files, tensors, spec)
        winner, reason = choose(rows)
        remove_model(dest)
        for src in (files[winner], Path(str(files[winner]) + ".data")):  # named as dest: its data stays found
            if src.exists():
                shutil.move(str(src), str(dest.parent / src.name))
        by_name = {r.exporter: r for r in rows}
        by_name[winner].file = dest.name
        for name, path in files.items():
            if name != winner:
                by_name[name].file = keep_candidate(path, dest.parent, name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    comparison = Comparison(
        rows, winner, reason, MARGIN, threads=spec.threads or runtime.default_threads(), budget_s=spec.latency_budget_s
    )
    kept = next(a for a in attempts if a.exporter == winner)
    info = ExportInfo(
        exporter=winner,
        opset_requested=spec.opset,
        opset=kept.opset_written,
        seconds=round(time.perf_counter() - start, 2),
        attempts=attempts,
        external_data=bool(graph_info.external_files(dest)),
        reason=f"compared: {reason}",
    )
    return info, comparison


def candidate_name(exporter: str) -> str:
    """Where the other exporter's file is kept, relative to the output folder."""
    return f"{CANDIDATES}/model.{exporter}.onnx"


def keep_candidate(path: Path, out: Path, exporter: str) -> str:
    """Move a compared file that did not win to `out/candidates/model.<exporter>.onnx`, its external data
    (`<name>.data`) renamed with it and the graph's references to it rewritten (only the graph is re-saved, not
    the weights). Returns its name relative to `out`."""
    import onnx

    name = candidate_name(exporter)
    target = out / name
    target.parent.mkdir(parents=True, exist_ok=True)
    old_data = path.name + ".data"
    refs = graph_info.external_files(path)
    if not refs:
        shutil.move(str(path), str(target))
        return name
    model = onnx.load(str(path), load_external_data=False)
    for t in graph_info.tensors(model):
        for entry in t.external_data:
            if entry.key == "location" and entry.value == old_data:
                entry.value = target.name + ".data"
    for ref in refs:  # the exporters write one `<name>.data`; any other file keeps its name beside it
        shutil.move(str(ref), str(target.parent / (target.name + ".data" if ref.name == old_data else ref.name)))
    onnx.save(model, str(target))
    path.unlink()
    return name


def check_candidate(
    row: CandidateRow,
    reference: LoadedModel,
    tensors: dict[str, torch.Tensor],
    path: Path,
    axes: dict[str, dict[int, str]],
    spec: CompareOptions,
) -> None:
    """The pipeline's checks on one candidate file (pipeline._check's functions), filled into `row`."""
    checker = graph_info.check(path)
    graph = graph_info.graph_info(path)
    row.checker, row.producer = checker.ok, graph.producer
    row.nodes, row.op_counts, row.size_bytes = sum(graph.op_counts.values()), graph.op_counts, graph.size_bytes
    session = runtime.cpu_session(path, spec.threads or runtime.default_threads(), arena=False)
    p, _ = parity_mod.parity(reference, session, tensors, spec.atol, spec.rtol)
    dynamic = parity_mod.probes(reference, session, tensors, axes, spec.atol, spec.rtol)
    del session
    runtime.release_memory()
    row.parity, row.parity_max_abs_diff, row.dynamic = p.ok, parity_mod.worst_diff(p.outputs), dynamic.ok
    row.failed_checks = [
        name for name, ok in (("checker", row.checker), ("parity", row.parity), ("dynamic", row.dynamic)) if ok is False
    ]


def time_side_by_side(
    rows: list[CandidateRow], files: dict[str, Path], tensors: dict[str, torch.Tensor], spec: CompareOptions
) -> None:
    """ORT CPU latency of every candidate file at the sample's batch, timed in alternating rounds."""
    threads = spec.threads or runtime.default_threads()
    arrays = parity_mod.to_numpy(tensors)
    batch, seq = latency_mod.shape_of(tensors)
    runners: dict[str, Callable[[], object]] = {}
    providers: dict[str, str] = {}
    by_name = {r.exporter: r for r in rows}
    for name, path in files.items():
        try:
            session = runtime.cpu_session(path, threads)
            feeds = runtime.feeds(session, arrays)
        except Exception as e:  # a file ORT cannot time here: its row says why instead of a number
            by_name[name].latency_error = first_line(e, with_type=True)
            continue
        runners[name] = functools.partial(session.run, None, feeds)
        providers[name] = session.get_providers()[0]
    per_round: dict[str, list[list[float]]] = {}
    results = latency_mod.side_by_side(runners, spec.latency_budget_s, ROUNDS, per_round=per_round) if runners else {}
    for name, result in results.items():
        if isinstance(result, BaseException):
            by_name[name].latency_error = first_line(result, with_type=True)
        else:
            by_name[name].ort_cpu = latency_mod.timing(result, batch, seq, threads, providers[name])
            by_name[name].round_p50_ms = [round(float(np.median(t)), 4) for t in per_round.get(name, [])]
    runners.clear()
    runtime.release_memory()


def choose(rows: list[CandidateRow], margin: float = MARGIN) -> tuple[str, str]:
    """(winner, how it was decided) among the rows that exported. Raises ValueError when none did."""
    exported = [r for r in rows if r.exported]
    if not exported:
        raise ValueError("no exporter wrote a usable file")
    out = "; ".join(
        f"{r.exporter} {r.error}" if r.skipped else f"{r.exporter} failed: {r.error}" for r in rows if not r.exported
    )
    if len(exported) == 1:
        return exported[0].exporter, f"{out}; {exported[0].exporter} is the only usable file"
    fewest = min(len(r.failed_checks) for r in exported)
    best = [r for r in exported if len(r.failed_checks) == fewest]
    if len(best) == 1:
        others = "; ".join(f"{r.exporter} fails {', '.join(r.failed_checks)}" for r in exported if r is not best[0])
        lead = (
            "only it passes every check"
            if fewest == 0
            else f"it fails fewer checks ({', '.join(best[0].failed_checks)})"
        )
        return best[0].exporter, f"{best[0].exporter}: {lead} ({others})"
    verdict = "both pass every check" if fewest == 0 else f"both fail {fewest} check(s)"
    timed = [(r, r.ort_cpu) for r in best if r.ort_cpu is not None]
    if len(timed) < len(best):
        missing = ", ".join(r.exporter for r in best if r.ort_cpu is None)
        return _preferred(best), f"{verdict}; no ORT CPU latency for {missing}: the tie goes to the new exporter"
    (fast, fast_cpu), (slow, slow_cpu) = sorted(timed, key=lambda pair: pair[1].p50_ms)[:2]
    a, b = fast_cpu.p50_ms, slow_cpu.p50_ms
    rounds = list(zip(fast.round_p50_ms, slow.round_p50_ms))
    won = sum(x < y for x, y in rounds)
    numbers = f"ORT CPU p50 {fast.exporter} {a:.3f} ms vs {slow.exporter} {b:.3f} ms ({1 - a / b:.0%} less"
    numbers += f", faster in {won} of {len(rounds)} rounds)" if rounds else ")"
    if a >= (1 - margin) * b:
        return _preferred(best), (
            f"{verdict}; {numbers}: within the {margin:.0%} margin, the tie goes to the new exporter"
        )
    if won < len(rounds):
        return _preferred(best), (
            f"{verdict}; {numbers}: not faster in every round (noise), the tie goes to the new exporter"
        )
    return fast.exporter, f"{verdict}; {fast.exporter} is faster: {numbers}, beyond the {margin:.0%} margin"


def _preferred(rows: list[CandidateRow]) -> str:
    names = [r.exporter for r in rows]
    return PREFERRED if PREFERRED in names else names[0]
