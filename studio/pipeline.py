"""convert(spec) -> Report: the only orchestration, used by the CLI, the app and the Python API.

Stages: loading, batch, export, checker, parity, shape probe, locate, variants, latency, profile, writing. Latency
comes after the variants so that model.onnx and every variant are each timed side by side with PyTorch
(`latency.measure_all`); ONNX Runtime's per-node profile (studio.checks.profile) after it, timing nothing beside it.
Everything is built in a private folder beside `spec.out` and moved in only when complete, so a
failed conversion leaves no half-written artifact behind.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from studio import artifacts, escape, sources
from studio.checks import graph_info as inspect_mod
from studio.checks import parity as parity_mod
from studio.checks import runtime
from studio.errors import StudioError
from studio.export import exporters as export_mod
from studio.generate.base import GENERATION_TASKS
from studio.inputs import batch as batch_mod
from studio.inputs import roles as roles_mod
from studio.inputs import sample as sample_mod
from studio.inputs.batch import Batch
from studio.report import timings as timings_mod
from studio.report.model import (
    CheckerInfo,
    DynamicInfo,
    ExportInfo,
    GraphInfo,
    LatencyInfo,
    ParityInfo,
    Report,
    VariantInfo,
)
from studio.sources import scratch
from studio.sources.base import TABULAR, LoadedModel, ModelInput
from studio.spec import ConvertSpec
from studio.timing import latency as latency_mod

STAGES = (
    "loading",
    "batch",
    "export",
    "checker",
    "parity",
    "shape probe",
    "locate",
    "variants",
    "latency",
    "profile",
    "writing",
)
_FRACTION = {
    "loading": 0.02,
    "batch": 0.1,
    "export": 0.15,
    "checker": 0.6,
    "parity": 0.65,
    "shape probe": 0.72,
    "locate": 0.75,
    "variants": 0.78,
    "latency": 0.85,
    "profile": 0.95,
    "writing": 0.97,
}
Progress = Callable[[str, float], None]
Tensors = dict[str, torch.Tensor]  # graph input name -> the sample's tensor
Axes = dict[str, dict[int, str]]  # graph input name -> {axis index: symbolic name} (export.dynamic_axes_for)


@dataclass
class Checks:
    """What the checks found on one ONNX file (`_check`): the report's four verdicts, ONNX Runtime's outputs on
    the sample (the predictions, the locator's start), and the CPU session they ran on with parity's call on it
    (ms), kept for latency when there are no variants (None: latency opens the file itself)."""

    checker: CheckerInfo
    graph: GraphInfo
    parity: ParityInfo
    dynamic: DynamicInfo
    onnx_outputs: dict[str, np.ndarray]
    session: Any = None  # an onnxruntime.InferenceSession (onnxruntime ships no types)
    session_calls: list[float] = field(default_factory=list)

    def failed(self) -> list[str]:
        """The checks the file failed: "checker", "parity", "dynamic" (shape probes)."""
        failed = [] if self.checker.ok else ["checker"]
        failed += [] if self.parity.ok else ["parity"]
        return failed + (["dynamic"] if self.dynamic.ok is False else [])

    def take_session(self) -> tuple[Any, list[float]]:
        """The session and its calls, handed on (to latency) and no longer held here."""
        found, self.session, self.session_calls = (self.session, self.session_calls), None, []
        return found


# Options the report does not list: server paths, named in it without their folders (see artifacts).
UNREPORTED = ("display_paths",)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    from studio._version import __version__

    return {
        "studio": __version__,
        "torch": str(torch.__version__),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "transformers": transformers.__version__,
    }


def preview(checkpoint: str | None, data: str | None, spec: ConvertSpec | None = None) -> dict[str, Any]:
    """What the app shows after upload: the model's kind and inputs, the sample's columns and rows."""
    out: dict[str, Any] = {"model": None, "columns": [], "rows": []}
    if checkpoint:
        out["model"] = sources.load(checkpoint, spec).describe()
    if data:
        df = sample_mod.read_sample(data, spec.sample_limits if spec is not None else None)
        out["columns"] = [asdict(c) for c in roles_mod.describe_columns(df)]
        rows = json.loads(df.head(5).to_json(orient="records", default_handler=str))
        out["rows"] = [{k: _preview_cell(v) for k, v in r.items()} for r in rows]
    return out


PREVIEW_CELL_CHARS = 1000  # the page shows the first rows; a megabyte cell is cut here, in the job process


def _preview_cell(v: Any) -> Any:
    return escape.cut(v, PREVIEW_CELL_CHARS) if isinstance(v, str) else v


def convert(spec: ConvertSpec, progress: Progress | None = None) -> Report:
    """Load, batch, export, check, compare, probe, time, write. Raises StudioError on bad input.

    The returned Report says which checks passed (`report.ok`); files are in `spec.out`.
    """
    spec = spec.validated()
    clock = timings_mod.StageClock(progress)
    stage = ["loading"]

    def say(name: str, fraction: float) -> None:
        stage[0] = name
        clock.say(name, fraction)

    out = Path(spec.out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise StudioError(f"--out {out} exists and is not a folder.")
    remove_stale(out)
    work = out.parent / f".{out.name}.partial-{scratch.name_tail()}{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    try:
        report = _run(spec, work, say)
        report.options["out"] = str(out)
        report.timings = clock.timings(report.export, finishing="writing")
        report.seconds = report.timings["total"]
        stage[0] = "writing"
        artifacts.write_report(report, work, spec.display_paths)
        artifacts.move_into(work, out)
    except Exception as e:  # a full disk, wherever it was met, is said in one place: here
        full = artifacts.disk_full(e)
        if full is None:
            raise
        raise artifacts.disk_full_error(full, work, out, stage[0]) from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say("done", 1.0)
    return report


def remove_stale(out: str | Path) -> list[Path]:
    """Remove the build folders (`.OUT.partial-PID-HOST-*`) that conversions into `out` left behind when they
    were killed (a memory or time limit, SIGKILL): those of this machine whose process is gone (see
    sources.scratch). Returns what was removed."""
    out = Path(out).expanduser().resolve()
    removed = []
    if out.parent.is_dir():
        for p in out.parent.glob(f".{glob_escape(out.name)}.partial-*"):
            if p.is_dir() and not p.is_symlink() and scratch.is_stale(p.name.rpartition(".partial-")[2]):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def _run(spec: ConvertSpec, work: Path, say: Progress) -> Report:
    say("loading", _FRACTION["loading"])
    loaded = sources.load(spec.checkpoint, spec, workdir=work)  # an uploaded zip is unpacked inside the job

    say("batch", _FRACTION["batch"])
    df = sample_mod.read_sample(spec.data, spec.sample_limits)
    if loaded.task in GENERATION_TASKS:  # a generator: with its cache, judged by generating (docs/generation.md)
        from studio.generate import run as generation

        if spec.cache:
            report = generation.convert_generator(spec, loaded, df, work, say)
            report.options = {k: v for k, v in spec.to_dict().items() if k not in UNREPORTED}
            report.versions = _versions()
            return report
        generation.plain_forward(loaded)  # --no-cache: the plain forward, logits only, checked as any logits model
    batch = batch_mod.build_batch(df, loaded, spec.roles, spec, file=str(spec.data))

    say("export", _FRACTION["export"])
    model_path = work / "model.onnx"
    # PyTorch's outputs for the sample and every probe size are computed once, whichever files are checked
    checked, comparison = parity_mod.cached_reference(loaded), None
    # the kept file's checker + session; without variants, that session is also the one latency times
    opened = export_mod.Opened(spec.threads or runtime.default_threads(), arena=not spec.variants)
    if spec.exporter == "compare":  # both exporters' files checked against one PyTorch run, the winner kept
        from studio.export import compare

        export_info, comparison = compare.export_compared(loaded, checked, batch.tensors, spec, model_path)
        artifacts.annotate(model_path, _metadata(spec, loaded, batch, export_info))
    else:
        # PyTorch's reference outputs (sample and probes) are computed beside a TorchScript export
        ahead = lambda prep: parity_mod.references(checked, batch.tensors, prep.axes, prep.traced)  # noqa: E731
        export_info = _export_annotated(spec, loaded, batch, model_path, opened=opened, beside=ahead)
    axes = export_mod.dynamic_axes_for(loaded, batch.tensors, spec)
    runtime.release_memory()  # the exporter's intermediate graphs are garbage now

    say("checker", _FRACTION["checker"])
    checks = _check(spec, checked, batch.tensors, model_path, axes, say, opened, export_info.traced)
    export_info, checks = _second_opinion(spec, loaded, checked, batch, model_path, axes, export_info, checks, say)
    divergence = _locate(spec, loaded, batch.tensors, model_path, checks, say)
    session, calls = checks.take_session()
    variant_infos, latency = _variants_and_latency(
        spec, loaded, batch.tensors, model_path, axes, work, say, session, calls
    )
    kept = [r.file for r in comparison.rows if r.file and r.file != "model.onnx"] if comparison else []
    profile = _profile(spec, batch.tensors, model_path, [v.file for v in variant_infos if v.file] + kept, work, say)

    report = Report(
        source=loaded.describe(),
        roles=batch.roles,
        export=export_info,
        graph=checks.graph,
        checker=checks.checker,
        parity=checks.parity,
        dynamic=checks.dynamic,
        latency=latency,
        options={k: v for k, v in spec.to_dict().items() if k not in UNREPORTED},
        predictions=_predictions(batch, loaded, checks.onnx_outputs),
        versions=_versions(),
        variants=variant_infos,
        warnings=list(batch.warnings) + list(loaded.info.get("warnings") or []),
        feeds={n: [dict(f) for f in parts] for n, parts in batch.features.items()},
        comparison=comparison,
        divergence=divergence,
        profile=profile,
    )
    say("writing", _FRACTION["writing"])
    report.files = _write_files(spec, loaded, batch, df, work)
    return report


def _export_annotated(
    spec: ConvertSpec,
    loaded: LoadedModel,
    batch: Batch,
    path: Path,
    order: tuple[str, ...] | None = None,
    opened: export_mod.Opened | None = None,
    beside: Callable[[export_mod.Prepared], object] | None = None,
) -> ExportInfo:
    info = export_mod.export(loaded, batch.tensors, spec, path, order=order, opened=opened, beside=beside)
    artifacts.annotate(path, _metadata(spec, loaded, batch, info))
    return info


def _second_opinion(
    spec: ConvertSpec,
    loaded: LoadedModel,
    checked: LoadedModel,
    batch: Batch,
    model_path: Path,
    axes: Axes,
    info: ExportInfo,
    checks: Checks,
    say: Progress,
) -> tuple[ExportInfo, Checks]:
    """`auto`: when the kept file fails a check (parity, a shape probe) and an exporter of auto's order was
    never tried (the first one wrote a usable file), that one exports too and is checked the same way;
    its file replaces model.onnx only when it passes every check. Returns (export info, checks) kept."""
    failed = checks.failed()
    planned, _ = export_mod.attempt_order(loaded, spec)
    rest = tuple(e for e in planned if e not in {a.exporter for a in info.attempts})
    if spec.exporter != "auto" or not failed or not rest:
        return info, checks
    first, fails = info.attempts[-1], f"its file fails {', '.join(failed)}"
    checks.take_session()  # not held through another export; latency opens the kept file itself
    runtime.release_memory()
    say("export", _FRACTION["export"])
    alt = model_path.parent / "second-opinion" / model_path.name
    alt.parent.mkdir()
    try:
        try:
            opened = export_mod.Opened(spec.threads or runtime.default_threads())
            other = _export_annotated(spec, loaded, batch, alt, order=rest, opened=opened)
        except StudioError as e:
            first.note = _joined(first.note, fails)
            info.attempts += getattr(e, "attempts", None) or []
            info.reason += f"; {fails}, and {'/'.join(rest)} failed: {e.message}"
            return info, checks
        say("checker", _FRACTION["checker"])
        alt_checks = _check(spec, checked, batch.tensors, alt, axes, say, opened, other.traced)
        alt_checks.take_session()  # opened at second-opinion/, which is moved or removed below
        alt_failed = alt_checks.failed()
        attempts, seconds = info.attempts + other.attempts, round(info.seconds + other.seconds, 2)
        if alt_failed:  # neither passes: the first one's file stays, as auto's order prefers it
            first.note = _joined(first.note, fails)
            second = other.attempts[-1]
            second.ok, second.error = False, f"its file fails {', '.join(alt_failed)} too: not kept"
            info.attempts, info.seconds = attempts, seconds
            info.reason += f"; {fails}, and {other.exporter}'s fails {', '.join(alt_failed)}: kept {info.exporter}'s"
            return info, checks
        first.ok, first.error = False, fails  # usable, but not the one kept
        artifacts.remove_model(model_path)
        for f in alt.parent.iterdir():  # model.onnx (+ model.onnx.data, named relative to it)
            if f.is_file():
                f.rename(model_path.parent / f.name)
        other.attempts, other.seconds = attempts, seconds
        other.reason = f"{info.exporter}'s file fails {', '.join(failed)}; {other.exporter}'s passes every check"
        return other, alt_checks
    finally:
        diagnostics = alt.parent / "diagnostics"  # a failed attempt's report, which its attempt points at
        if diagnostics.is_dir():
            (model_path.parent / "diagnostics").mkdir(exist_ok=True)
            for f in diagnostics.iterdir():
                f.rename(model_path.parent / "diagnostics" / f.name)
        shutil.rmtree(alt.parent, ignore_errors=True)


def _joined(*parts: str | None) -> str:
    return "; ".join(p for p in parts if p)


def _check(
    spec: ConvertSpec,
    loaded: LoadedModel,
    tensors: Tensors,
    model_path: Path,
    axes: Axes,
    say: Progress,
    opened: export_mod.Opened | None = None,
    traced: list[int | None] | None = None,
) -> Checks:
    """The onnx checker, the graph's facts, parity on the sample and the shape probes (one ORT session).
    `opened` (export.Opened): the checker's verdict and the session made when the export proved the file
    usable, taken instead of making them again (the file has only gained metadata since). The session is
    kept in the Checks too: without variants, latency times it, warm from parity."""
    checker, session = opened.take() if opened is not None else (None, None)
    checker = checker or inspect_mod.check(model_path)
    graph = inspect_mod.graph_info(model_path)

    say("parity", _FRACTION["parity"])
    # with variants the checks run without ORT's memory arena (it never shrinks) and latency makes its own
    # sessions after the variants are built; without, latency times this one (arena on, as users run it)
    threads = spec.threads or runtime.default_threads()
    session = session or runtime.cpu_session(model_path, threads, arena=not spec.variants)
    calls: list[float] = []  # ORT's call on the sample: latency's first timed call when it times this session
    parity, onnx_outputs = parity_mod.parity(loaded, session, tensors, spec.atol, spec.rtol, calls=calls)

    say("shape probe", _FRACTION["shape probe"])
    dynamic = parity_mod.probes(loaded, session, tensors, axes, spec.atol, spec.rtol, traced=traced)
    if spec.variants:
        session = None
        runtime.release_memory()
    return Checks(checker, graph, parity, dynamic, onnx_outputs, session=session, session_calls=calls)


def _locate(
    spec: ConvertSpec, loaded: LoadedModel, tensors: Tensors, model_path: Path, checks: Checks, say: Progress
) -> dict[str, Any] | None:
    """Where ONNX Runtime first leaves PyTorch (studio.checks.locate): when parity or a shape probe failed, or on
    request (--locate); None otherwise. report.json's `divergence`; it does not change the verdict."""
    parity, dynamic = checks.parity, checks.dynamic
    if not (spec.locate or not parity.ok or dynamic.ok is False) or parity.error:
        return None  # nothing failed; or ONNX Runtime cannot run the rows at all (parity.error says why)
    say("locate", _FRACTION["locate"])
    from studio.checks import locate  # its hooks keep every module's outputs: only imported when it runs

    found = locate.for_report(
        loaded,
        model_path,
        tensors,
        spec,
        parity=parity,
        dynamic=dynamic,
        onnx_outputs=checks.onnx_outputs,
        requested=spec.locate,
    )
    runtime.release_memory()
    return found.to_dict() if found else None


def _variants_and_latency(
    spec: ConvertSpec,
    loaded: LoadedModel,
    tensors: Tensors,
    model_path: Path,
    axes: Axes,
    work: Path,
    say: Progress,
    session: Any = None,
    calls: Sequence[float] = (),
) -> tuple[list[VariantInfo], LatencyInfo]:
    """The variants asked for (built and checked), then PyTorch, model.onnx and every variant timed side by
    side. Returns (variant infos, model.onnx's latency). `session`: model.onnx's CPU session from the checks,
    which ran the sample on it (and PyTorch too, for the parity reference): timed as warm at that size, and
    `calls` (ms: parity's call on it) count as its first timed calls there."""
    target = latency_mod.Target(model_path, cpu_session=session, cpu_calls=list(calls) if session else [])
    variant_infos: list[VariantInfo] = []
    timed = {"model": target}
    if spec.variants:
        say("variants", _FRACTION["variants"])
        from studio.variants import table as variants  # optimized / int8 / fp16 artifacts, each checked like model.onnx

        variant_infos, variant_targets = variants.build(spec, loaded, tensors, model_path, axes, work)
        timed.update(variant_targets)

    say("latency", _FRACTION["latency"])
    span = _FRACTION["profile"] - _FRACTION["latency"]  # slow models take a while here: move the bar per round
    measured = latency_mod.measure_all(
        loaded,
        timed,
        tensors,
        threads=spec.threads or runtime.default_threads(),
        budget_s=spec.latency_budget_s,
        cuda=spec.cuda,
        progress=lambda f: say("latency", _FRACTION["latency"] + span * f),
        torch_warm=True,  # the parity reference ran the sample (parity.cached_reference)
    )
    if variant_infos:
        variants.attach_latency(variant_infos, measured, measured["model"])
    return variant_infos, measured["model"]


def _profile(
    spec: ConvertSpec, tensors: Tensors, model_path: Path, others: list[str], work: Path, say: Progress
) -> dict[str, Any]:
    """ONNX Runtime's per-node profile of model.onnx and of the other files (each variant, the other exporter's file
    kept by --exporter compare; paths relative to the output folder) on the sample (studio.checks.profile), after
    latency so that it times nothing beside it; each file's runs within min(1 s, the latency budget)."""
    say("profile", _FRACTION["profile"])
    from studio.checks import profile as profile_mod

    files = {f: work / f for f in others if (work / f).is_file()}
    arrays = {n: t.detach().cpu().numpy() for n, t in tensors.items()}
    budget = min(profile_mod.BUDGET_S, spec.latency_budget_s)
    return profile_mod.for_report(model_path, arrays, work, files, threads=spec.threads, budget_s=budget)


def _write_files(spec: ConvertSpec, loaded: LoadedModel, batch: Batch, df: pd.DataFrame, work: Path) -> dict[str, str]:
    """The sample's tensors, the tokenizer, the example script and the rows it reads; their report.files."""
    # Any: numpy 2's stub lets ** fill its allow_pickle flag; numpy 1.26 (also supported) has no such keyword
    arrays: dict[str, Any] = {n: t.detach().cpu().numpy() for n, t in batch.tensors.items()}
    np.savez(work / "sample_inputs.npz", **arrays)
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(str(work / "tokenizer"))
    example = artifacts.write_example(work, loaded, batch, df, spec.data, spec.fill_value)
    files = {
        "model": "model.onnx",
        "report_json": "report.json",
        "report_md": "report.md",
        "example": example["example"],
        "sample_inputs": "sample_inputs.npz",
        "sample": example["sample"],
        "sample_rows": example["sample_rows"],
    }
    if (work / "model.onnx.data").exists():
        files["data"] = "model.onnx.data"
    if loaded.tokenizer is not None:
        files["tokenizer"] = "tokenizer"
    return files


def _metadata(spec: ConvertSpec, loaded: LoadedModel, batch: Batch, info: ExportInfo) -> dict[str, str]:
    from studio._version import __version__

    return {
        "studio.version": __version__,
        "studio.source_kind": loaded.kind,
        "studio.roles": json.dumps(batch.roles),
        "studio.inputs": json.dumps({i.name: _input_meta(i, batch) for i in loaded.inputs if i.name in batch.tensors}),
        "studio.tokenizer": json.dumps(batch.tokenizer_settings),
        "studio.opset": str(info.opset),
        "studio.exporter": str(info.exporter),
        "studio.outputs": json.dumps({n: loaded.output_kinds.get(n, "other") for n in loaded.output_names}),
        "studio.labels": json.dumps(loaded.info.get("labels")),
    }


def _input_meta(inp: ModelInput, batch: Batch) -> dict[str, Any]:
    """What feeds one graph input: a tabular input's columns in order and the feature indices of each."""
    if inp.kind != TABULAR:
        return {"kind": inp.kind, "column": None}
    cols = batch.tabular.get(inp.name) or []
    return {
        "kind": inp.kind,
        "column": cols[0] if len(cols) == 1 else None,
        "columns": list(cols),
        "width": batch.widths.get(inp.name),
        "features": batch.features.get(inp.name, []),
    }


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _predictions(batch: Batch, loaded: LoadedModel, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per row: the ignored columns beside the ONNX model's prediction (class outputs only)."""
    rows = [{col: values[i] for col, values in batch.ignored.items()} for i in range(batch.rows)]
    labels = loaded.info.get("labels") or None
    name = next((n for n in loaded.output_names if loaded.output_kinds.get(n) in ("probs", "logits")), None)
    if name is None or outputs.get(name) is None or outputs[name].ndim != 2:
        return rows
    scores = outputs[name].astype(np.float64)
    probs = scores if loaded.output_kinds[name] == "probs" else _softmax(scores)
    for i, row in enumerate(rows):
        k = int(probs[i].argmax())
        row["prediction"] = labels[k] if labels and k < len(labels) else k
        row["confidence"] = round(float(probs[i, k]), 4)
    return rows
