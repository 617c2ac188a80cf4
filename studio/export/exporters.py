"""torch.onnx.export with the new (torch.export-based) and the legacy (TorchScript) exporter.

`export()` writes one .onnx file (+ .data when the weights are large), reads the opset back
from the file, and records every attempt. Exporter "auto" tries one exporter first (attempt_order) and
falls back to the other when it fails, writes another opset than requested, or writes a file
that the onnx checker rejects or ONNX Runtime cannot load: an attempt only succeeds with a file the
later stages can open. An attempt known to fail is skipped up front, with the reason recorded.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from studio.artifacts import remove_model, reraise_disk_full
from studio.checks.graph_info import check, external_files
from studio.errors import ExportError, OpsetMismatchError, first_line
from studio.export._alongside import alongside
from studio.export._example import small_inputs, trace_inputs, traced_shape
from studio.export._legacy_weights import proto_rewritten, weights_apart, write_external
from studio.export._split17 import split_to_opset17
from studio.quiet import quiet
from studio.report.model import CheckerInfo, ExportAttempt, ExportInfo
from studio.sources.base import TABULAR, LoadedModel
from studio.sources.wrap import wrap
from studio.spec import ExportOptions

# Above this many bytes of weights the graph is written with external data (model.onnx.data).
# Protobuf caps a single file at 2 GiB, but memory sets the lower bar: with the weights inside the
# .onnx, every full read of the file (writing it, annotating it, the checker, graph inspection) holds
# the weights twice more in memory (proto + serialized bytes) beside the PyTorch copy: ~3x the weights
# in total (bert-base: 2.3 GB peak RSS for `studio convert`). External data keeps those steps small,
# so the whole run stays near weights + one ORT session (bert-base: see benchmarks/README.md).
EXTERNAL_DATA_BYTES = 256 * 1024**2
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# --exporter -> the exporters tried, in this order
ATTEMPT_ORDER = {
    "auto": ("dynamo", "torchscript"),
    "dynamo": ("dynamo",),
    "torchscript": ("torchscript",),
    "compare": ("dynamo", "torchscript"),
}  # compare runs every one (studio/export/compare.py)
# `auto` on a model with at most this many bytes of weights tries the TorchScript exporter first. It is
# several times faster (torch 2.13, benchmarks/README.md): all-MiniLM-L6-v2 (90 MB) ~1.9 s of CPU against
# ~16 s for the new exporter; bert-base (440 MB) 6.4 s against ~27 s. Above EXTERNAL_DATA_BYTES its weights
# go straight to the .data file (studio/export/_legacy_weights.py), so its peak is the PyTorch weights plus the
# constants it folds (transposed MatMul weights: up to 1x more) -- bert-base 1.07 GB. Past 2 GiB that second
# copy weighs more than the new exporter's time, which goes first there.
TORCHSCRIPT_FIRST_BYTES = 2 * 1024**3


def dynamic_axes_for(
    loaded: LoadedModel, tensors: dict[str, torch.Tensor], spec: ExportOptions
) -> dict[str, dict[int, str]]:
    """input name -> {axis index: symbolic name} from the spec's batch/sequence choice."""
    out: dict[str, dict[int, str]] = {}
    kinds = {i.name: i.kind for i in loaded.inputs}
    for name, t in tensors.items():
        axes = spec.axes_for(name)
        d: dict[int, str] = {}
        if "batch" in axes and t.dim() >= 1:
            d[0] = "batch"
        if "sequence" in axes and t.dim() >= 2 and kinds.get(name) != TABULAR:
            d[1] = "sequence"
        if d:
            out[name] = d
    return out


def read_opset(path: Path, model: onnx.ModelProto | None = None) -> int | None:
    model = model or onnx.load(str(path), load_external_data=False)
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def _weights_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) + sum(
        b.numel() * b.element_size() for b in module.buffers()
    )


def _export_dynamo(model, args, names, output_names, axes, opset, path: Path, external: bool, diag_dir: Path):
    dims: dict[str, torch.export.Dim] = {}
    dynamic_shapes = {
        n: {ax: dims.setdefault(sym, torch.export.Dim(sym)) for ax, sym in axes.get(n, {}).items()} or None
        for n in names
    }
    torch.onnx.export(
        model,
        args,
        str(path),
        input_names=names,
        output_names=output_names,
        opset_version=opset,
        dynamo=True,
        external_data=external,
        dynamic_shapes=dynamic_shapes if axes else None,
        report=True,
        artifacts_dir=str(diag_dir),
        verbose=False,
    )


def _output_axes(model, args, names, axes) -> tuple[list[tuple[int, ...]], list[dict[int, str]]]:
    """Each output's shape at a small example (example.small_inputs; the whole example when the model
    refuses that size), and which of its dims follow the batch / sequence size: run at size+1 and see what
    moves."""
    small = small_inputs(names, args, axes)
    if any(s.shape != t.shape for s, t in zip(small, args)):
        try:
            return _moving_dims(model, small, names, axes)
        except Exception:  # noqa: BLE001 - e.g. an audio model's convolutions need more samples than that
            pass
    return _moving_dims(model, args, names, axes)


def _moving_dims(model, args, names, axes) -> tuple[list[tuple[int, ...]], list[dict[int, str]]]:
    with torch.no_grad():
        base = [tuple(o.shape) for o in model(*args)]
        found: list[dict[int, str]] = [{} for _ in base]
        for sym in ("batch", "sequence"):
            grown = []
            for n, t in zip(names, args):
                ax = next((a for a, s in axes.get(n, {}).items() if s == sym), None)
                if ax is None:
                    grown.append(t)
                else:
                    grown.append(torch.cat([t, t.narrow(ax, 0, 1)], dim=ax))
            if all(g is t for g, t in zip(grown, args)):
                continue
            try:
                moved = [tuple(o.shape) for o in model(*grown)]
            except Exception:  # noqa: BLE001 - the user's model refuses the grown size: this axis stays unknown
                continue
            for k, (b, m) in enumerate(zip(base, moved)):
                for d, (x, y) in enumerate(zip(b, m)):
                    if x != y:
                        found[k][d] = sym
    return base, found


def _has_layer_norm(module: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.LayerNorm) for m in module.modules())


def skip_reason(exporter: str, loaded: LoadedModel, spec: ExportOptions) -> str | None:
    """Why `auto` (or `compare`) does not even try `exporter` (measured with torch 2.13), or None.

    Below opset 17 the new exporter's down-conversion cannot express LayerNormalization (an opset-17
    op): it writes an opset-18 file instead, after a full export (seconds). A model without LayerNorm
    is still tried (a plain Linear stack is written at 14). A forced exporter is always tried."""
    if (
        spec.exporter in ("auto", "compare")
        and exporter == "dynamo"
        and spec.opset < 17
        and _has_layer_norm(loaded.module)
    ):
        return (
            f"skipped: the model has LayerNorm layers, and the new exporter cannot write them at opset "
            f"{spec.opset} (LayerNormalization needs opset 17; torch's down-conversion fails and writes 18)"
        )
    return None


@dataclass
class Opened:
    """What proving a written file usable already made, kept for the checks that follow (built once per
    file): the checker's verdict and the ORT CPU session (`threads` intra-op threads; `arena`: ORT's CPU
    memory arena on, as the latency stage builds its sessions, so that one session serves both)."""

    threads: int
    arena: bool = False
    checker: CheckerInfo | None = None
    session: object | None = None

    def take(self) -> tuple[CheckerInfo | None, object | None]:
        found, self.checker, self.session = (self.checker, self.session), None, None
        return found


def file_problem(path: Path, opened: Opened | None = None, model: onnx.ModelProto | None = None) -> str | None:
    """Why the written file cannot be used (the onnx checker's or ONNX Runtime's words), or None. With `opened`, a
    usable file's checker result and session are left there for the checks; `model`: the graph already read."""
    from studio.checks import runtime

    checker = check(path, model)
    if not checker.ok:
        return f"the file fails the onnx checker: {checker.message.splitlines()[0][:400]}"
    session, problem = runtime.check_session(path, opened.threads if opened else 1, opened.arena if opened else False)
    if problem:
        return f"ONNX Runtime cannot load the file: {problem}"
    if opened is not None:
        opened.checker, opened.session = checker, session
    return None


def _export_legacy(
    model, args, names, output_names, axes, opset, path: Path, external: bool, diag_dir: Path, on_exported=None
):
    """torch.onnx.export's TorchScript exporter; `on_exported()` once it returned (the weights are written after)."""
    dyn = {n: {ax: sym for ax, sym in a.items()} for n, a in axes.items()}
    static: dict[str, dict[int, int]] = {}  # output -> {dim: size} for the dims that moved with neither axis
    if axes:
        for o, shape, found in zip(output_names, *_output_axes(model, args, names, axes)):
            if found:
                dyn[o] = found
            static[o] = {d: int(n) for d, n in enumerate(shape) if d not in found}
    pin = (lambda m: _pin_dims(m, static)) if static else None  # noqa: E731
    apart: contextlib.AbstractContextManager[dict[str, torch.Tensor]] = (
        weights_apart() if external else contextlib.nullcontext({})
    )
    with apart as taken, proto_rewritten(pin) as pinned:
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=names,
            output_names=output_names,
            opset_version=opset,
            dynamo=False,
            dynamic_axes=dyn or None,
            do_constant_folding=True,
            verbose=False,
        )
    if on_exported is not None:
        on_exported()
    if taken:
        write_external(path, taken)
    if static and not pinned:  # the seam was not there: the file itself
        _pin_output_dims(path, static)
    if external and not external_files(path):
        externalize(path)


def _pin_output_dims(path: Path, static: dict[str, dict[int, int]]) -> None:
    """Write the size of each output dim that moved with neither the batch nor the sequence size (_output_axes)
    where the legacy exporter left a made-up symbol ("Divsentence_embedding_dim_1" for an embedding's 384)."""
    model = onnx.load(str(path), load_external_data=False)
    if _pin_dims(model, static):
        onnx.save(model, str(path))


def _pin_dims(model: onnx.ModelProto, static: dict[str, dict[int, int]]) -> bool:
    """_pin_output_dims on a model in memory; whether anything changed."""
    changed = False
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        for d, size in static.get(out.name, {}).items():
            if d < len(dims) and dims[d].HasField("dim_param"):
                dims[d].dim_value = size  # clears dim_param (a oneof)
                changed = True
    return changed


def externalize(path: Path) -> None:
    """Move the initializers of an .onnx file into `<name>.data` beside it (the legacy exporter embeds
    them below 2 GiB), so every exporter gives the same layout above EXTERNAL_DATA_BYTES."""
    model = onnx.load(str(path))
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=Path(path).name + ".data",
        size_threshold=1024,
    )


# exporter name (spec.EXPORTERS, less "auto" and "compare") -> the function that runs it
EXPORT_FUNCTIONS = {"dynamo": _export_dynamo, "torchscript": _export_legacy}


def _diagnosis(diag_dir: Path, since: float) -> Path | None:
    reports = sorted(
        (p for p in diag_dir.glob("onnx_export_*.md") if p.stat().st_mtime >= since - 1),
        key=lambda p: p.stat().st_mtime,
    )
    return reports[-1] if reports else None


@dataclass
class Prepared:
    """What every attempt on one model exports from: the wrapped module, its example arguments, the axes."""

    names: list[str]
    axes: dict[str, dict[int, str]]
    args: tuple[torch.Tensor, ...]
    model: torch.nn.Module
    external: bool
    diag_dir: Path

    @property
    def traced(self) -> list[int | None] | None:
        """The size the exporters trace (ExportInfo.traced), known before any runs."""
        return traced_shape(self.names, self.args, self.axes) if self.axes else None


def prepare(loaded: LoadedModel, tensors: dict[str, torch.Tensor], spec: ExportOptions, diag_dir: Path) -> Prepared:
    names = list(tensors)
    axes = dynamic_axes_for(loaded, tensors, spec)
    model = wrap(loaded, names)
    example = trace_inputs(model, tensors, axes)
    diag_dir.mkdir(parents=True, exist_ok=True)
    return Prepared(
        names,
        axes,
        tuple(example[n] for n in names),
        model,
        _weights_bytes(loaded.module) > EXTERNAL_DATA_BYTES,
        diag_dir,
    )


def attempt(
    prep: Prepared,
    exporter: str,
    loaded: LoadedModel,
    spec: ExportOptions,
    dest: Path,
    opened: Opened | None = None,
    on_exported=None,
) -> tuple[ExportAttempt, ExportError | None]:
    """One exporter, written to `dest` and checked there (opset read back, checker, ONNX Runtime loads it).
    Returns the attempt and, when it failed, the error that names why (None for a skipped one). A failed
    attempt may leave a file at `dest`: the caller removes it."""
    skipped = skip_reason(exporter, loaded, spec)
    if skipped:
        return ExportAttempt(exporter, False, skipped, 0.0, skipped=True), None
    diag_dir = prep.diag_dir
    remove_model(dest)
    t0, wall0 = time.perf_counter(), time.time()
    try:
        with quiet(), torch.no_grad():  # exporter progress and deprecation chatter
            EXPORT_FUNCTIONS[exporter](
                prep.model,
                prep.args,
                prep.names,
                list(loaded.output_names),
                prep.axes,
                spec.opset,
                dest,
                prep.external,
                diag_dir,
                **({"on_exported": on_exported} if on_exported and exporter == "torchscript" else {}),
            )
    except Exception as e:  # the exporter's own failure: keep its words and its report
        reraise_disk_full(e)  # not the exporter's: the next one would fill the disk again
        diag = _diagnosis(diag_dir, wall0) if exporter == "dynamo" else None
        # torch's messages carry terminal colours: removed before the cut (the whole first line first)
        msg = ANSI.sub("", first_line(e, len(str(e)), with_type=True))[:500]
        return (
            ExportAttempt(
                exporter,
                False,
                msg,
                round(time.perf_counter() - t0, 2),
                diagnosis_path=f"{diag_dir.name}/{diag.name}" if diag else None,
            ),
            ExportError(
                f"The {exporter} exporter failed: {msg}",
                details=diag.read_text(errors="replace") if diag else str(e)[:20000],
            ),
        )
    # the file read once for its opset and its external-data check (an embedded 90 MB graph: ~0.1 s a read)
    proto: onnx.ModelProto | None = onnx.load(str(dest), load_external_data=False)
    written = read_opset(dest, proto)
    if written != spec.opset:
        err = OpsetMismatchError(spec.opset, written, exporter)
        return ExportAttempt(exporter, False, err.message, round(time.perf_counter() - t0, 2), written), err
    note = None
    if exporter == "dynamo" and written is not None and written < 18:
        rewritten, _ = split_to_opset17(dest)
        if rewritten:
            proto = None  # read again where it is needed
            note = (
                f"rewrote {rewritten} opset-18 Split node(s) (num_outputs) that the new exporter left "
                f"in the opset-{written} file into Split with explicit sizes"
            )
    problem = file_problem(dest, opened, proto)
    seconds = round(time.perf_counter() - t0, 2)
    if problem:  # what the exporter wrote cannot be used: a failed attempt, never a crash later on
        msg = f"the {exporter} exporter wrote an unusable file: {problem}"[:1000]
        return (
            ExportAttempt(exporter, False, msg, seconds, written, note=note),
            ExportError(
                msg[0].upper() + msg[1:],
                hint="Try another --exporter or --opset (the report of --exporter auto lists every attempt).",
            ),
        )
    return ExportAttempt(exporter, True, None, seconds, written, note=note), None


def attempt_order(loaded: LoadedModel, spec: ExportOptions) -> tuple[tuple[str, ...], str | None]:
    """The exporters `spec.exporter` tries, in order, and why that order (None: the fixed one).

    `auto` tries the TorchScript exporter first on a model with at most TORCHSCRIPT_FIRST_BYTES of
    weights that is not trusted code (a .pt2 program or a pickled module: the legacy exporter would bake
    in its shapes); every other model goes to the new exporter first."""
    order = ATTEMPT_ORDER[spec.exporter]
    if spec.exporter != "auto" or loaded.trusted_code:
        return order, None
    size = _weights_bytes(loaded.module)
    if size <= TORCHSCRIPT_FIRST_BYTES:
        why = (
            f"tried first: {size / 2**20:.0f} MB of weights, at most {TORCHSCRIPT_FIRST_BYTES // 2**20} MB, "
            "where the TorchScript exporter is several times faster"
        )
        return ("torchscript", "dynamo"), why
    return order, None


def choice_reason(spec: ExportOptions, attempts: list[ExportAttempt], why_first: str | None = None) -> str:
    """Why the last attempt's exporter is the one kept, in words (ExportInfo.reason)."""
    kept = attempts[-1].exporter
    if len(ATTEMPT_ORDER.get(spec.exporter, ())) == 1:
        return f"{kept} was asked for (--exporter {spec.exporter})"
    if len(attempts) == 1:
        return f"{kept} succeeded first" + (f" ({why_first})" if why_first else "")
    before = "; ".join(
        f"{a.exporter} {a.error}" if a.skipped else f"{a.exporter} failed: {a.error}" for a in attempts[:-1]
    )
    return f"{before}; fell back to {kept}"


def export(
    loaded: LoadedModel,
    tensors: dict[str, torch.Tensor],
    spec: ExportOptions,
    dest: Path,
    order: tuple[str, ...] | None = None,
    opened: Opened | None = None,
    beside: Callable[[Prepared], object] | None = None,
) -> ExportInfo:
    """Export `loaded` to `dest` (model.onnx path), trying the exporters of `attempt_order` (or `order`) until
    one writes a usable file; ExportError when every attempt failed. `opened`: filled with the kept file's checker
    result and ORT session (Opened). `beside(prep)`: work run in a thread (studio.export._alongside) beside the first
    TorchScript attempt."""
    prep = prepare(loaded, tensors, spec, dest.parent / "diagnostics")
    attempts: list[ExportAttempt] = []
    start = time.perf_counter()
    last_error: ExportError | None = None
    planned, why_first = attempt_order(loaded, spec)
    for exporter in order or planned:
        # beside TorchScript only, once torch.onnx.export returned (weights, checker, ORT session follow on one
        # core); is_in_onnx_export() and torch.export's flags are process-wide, and models may read them
        work, returned = (beside if exporter == "torchscript" else None), threading.Event()
        with alongside(work, prep, name="studio-beside-export", after=returned.is_set):
            done, error = attempt(prep, exporter, loaded, spec, dest, opened, on_exported=returned.set)
        beside = None if exporter == "torchscript" else beside
        attempts.append(done)
        if not done.ok:
            last_error = error or last_error
            continue
        prune_diagnostics(prep.diag_dir, attempts)
        return ExportInfo(
            exporter=exporter,
            opset_requested=spec.opset,
            opset=done.opset_written,
            seconds=round(time.perf_counter() - start, 2),
            attempts=attempts,
            external_data=prep.external and bool(external_files(dest)),  # both exporters embed otherwise
            reason=choice_reason(spec, attempts, why_first if order is None else None),
            traced=prep.traced,
        )
    remove_model(dest)
    prune_diagnostics(prep.diag_dir, attempts)
    error = failure(attempts, last_error, spec.opset)
    error.attempts = attempts  # what was tried, for a caller that records them (pipeline's second opinion)
    raise error


def failure(attempts: list[ExportAttempt], last_error: ExportError | None, opset: int) -> ExportError:
    """The error to raise when no attempt gave a usable file."""
    tried = [a for a in attempts if not a.skipped]
    if last_error is None or len(attempts) > 1:
        summary = "; ".join(f"{a.exporter}: {a.error}" for a in attempts)
        if (
            tried
            and all(a.opset_written is not None and a.opset_written != opset for a in tried)
            and isinstance(last_error, OpsetMismatchError)
        ):  # every exporter ran, none wrote the opset
            return last_error
        return ExportError(
            f"Every exporter failed ({summary})",
            details=last_error.details if last_error else None,
            hint=last_error.hint if last_error else None,
        )
    return last_error


def prune_diagnostics(diag_dir: Path, attempts: list[ExportAttempt]) -> None:
    """Keep only the diagnoses of failed attempts (the report points at them); drop the folder if empty."""
    keep = {Path(a.diagnosis_path).name for a in attempts if a.diagnosis_path}
    for f in diag_dir.iterdir():
        if f.name not in keep:
            if f.is_dir():
                shutil.rmtree(f, ignore_errors=True)
            else:
                f.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        diag_dir.rmdir()
