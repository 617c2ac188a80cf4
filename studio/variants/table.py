"""Faster artifacts beside model.onnx: ORT-optimized, int8 (dynamic), int8-static and fp16, each with its own checks.

Each variant is declared once, in VARIANT_TABLE (a `Variant` each: its builder, what it is built from, its
verdict rule, where it runs); `build`, `check` and `tolerance` read the table and never compare names. A new
variant is a builder function (studio/variants/_builders.py) and one row there (and its name in spec.VARIANTS).

`build(spec, loaded, tensors, model_path, axes, work)` is called by `pipeline.convert` when
`spec.variants` is non-empty. Files go to `<out>/variants/model.<name>.onnx` (+ `.onnx.data` when the
weights are external, as model.onnx's are); `VariantInfo.file` is relative to the output folder.
Every variant gets the same checks as model.onnx: parity with PyTorch on the sample rows and the
dynamic-dimension probes; `build` also returns how to time each one, and the pipeline's latency stage
times them side by side with PyTorch and model.onnx (ORT CPU at the sample's batch and at batch 1, ORT
CUDA with IO binding when CUDA is truly in use); `attach_latency` adds their speedups over both.
A variant that misses its tolerance is reported as failed (and fails the conversion), never hidden;
one that cannot be built is reported with the reason. With spec.repair (the default), a failed variant whose
row says how (`Variant.repair`) is repaired first (studio/variants/_repair.py: its worst nodes kept in float,
rebuilt, rechecked; `_repaired` here), its unrepaired file timed beside it for the price and then removed
(`attach_latency`), which also marks the variant to take on this CPU (`VariantInfo.take`).

How each is built (which fusers, quantizer and converter, and why): studio/variants/_builders.py.

Verdicts (each row of VARIANT_TABLE; `tolerance()` writes them into VariantInfo.tolerance and the report):
- optimized: model.onnx's rule (--atol / --rtol): fusions reorder fp32 arithmetic, within float noise only.
- int8 cannot meet fp32's 1e-4: class outputs (logits / probs) must pick PyTorch's class on most rows, and
  the element-wise bound is loose (it catches broken quantization, not rounding).
- fp16: 10-bit mantissa (~3 significant digits): a 1e-2 bound and the argmax rule.
A user tolerance looser than these (--atol / --rtol) is honoured: the looser of the two applies.
- Embeddings (sentence_embedding, token_embeddings, last_hidden_state): for int8 and fp16 the verdict is
  a cosine rule instead of the element-wise one: the lowest cosine similarity with PyTorch over the rows
  (sentence embeddings) or over the real tokens (token embeddings) must be at least INT8_MIN_COSINE /
  FP16_MIN_COSINE. An embedding is used through cosine similarity, so direction is what must survive;
  element-wise bounds either pass broken quantization (small normalised values) or fail good ones
  (large unnormalised token states). Measured on the real all-MiniLM-L6-v2 over 25 varied sentences:
  int8 lowest 0.982 per sentence (mean 0.992) and 0.977 per real token (mean 0.991); fp16 above 0.99999 on
  both. So int8 needs 0.97 (a margin under what int8 rounding does to a healthy model; a broken scale or
  zero point drops far lower) and fp16 0.999 (fp16 rounding alone stays far above it).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from studio.artifacts import artifact_files, remove_model, reraise_disk_full
from studio.checks import parity as parity_mod
from studio.checks import runtime
from studio.checks.parity import Tolerance, cached_reference, judge
from studio.errors import first_line
from studio.quiet import quiet
from studio.report.model import LatencyInfo, ParityInfo, VariantInfo
from studio.sources.base import LoadedModel
from studio.spec import VariantOptions
from studio.timing import latency as latency_mod
from studio.variants import _repair as repair_mod
from studio.variants._builders import Built, Context, build_fp16, build_int8, build_optimized, move_model
from studio.variants._static import build_int8_static

FOLDER = "variants"
ROOT_LOGGER = ("",)  # quiet(): the root logger

INT8_ATOL, INT8_RTOL, INT8_MIN_AGREEMENT = 0.1, 0.1, 0.99
FP16_ATOL, FP16_RTOL, FP16_MIN_AGREEMENT = 1e-2, 1e-2, 0.99
INT8_MIN_COSINE, FP16_MIN_COSINE = 0.97, 0.999  # embeddings' verdict for int8 / fp16 (module docstring)


# --- tolerances -----------------------------------------------------------------------------------


def tolerance(name: str, atol: float, rtol: float) -> Tolerance:
    """The verdict rule for a variant (its VARIANT_TABLE row), given the conversion's own --atol / --rtol:
    the looser of the row's bound and the user's applies."""
    if name not in VARIANT_TABLE:
        raise ValueError(name)
    v = VARIANT_TABLE[name]
    a = atol if v.atol is None else max(v.atol, atol)
    r = rtol if v.rtol is None else max(v.rtol, rtol)
    rule = v.rule.format(atol=a, rtol=r, agreement=v.min_agreement, cosine=v.min_cosine)
    return Tolerance(a, r, v.min_agreement, rule, v.min_cosine)


# --- the variants, declared once ------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One variant: everything `build`, `check` and `tolerance` need to know about it.

    build(ctx, src, dest) writes `dest` from `src`: the first of `built_from` (variants built earlier in the
    same run) that was built, else model.onnx. Verdict: every element within atol + rtol x |PyTorch|, where
    atol / rtol are the looser of these and the user's --atol / --rtol (None: the user's alone, as for
    model.onnx); class outputs must pick PyTorch's class on at least `min_agreement` of the rows (None: not
    judged); embeddings need a lowest cosine of `min_cosine` instead of the element-wise rule (None: the
    element-wise rule). `rule` says so in the report ({atol} {rtol} {agreement} {cosine} filled in).
    Where it runs: `on_cuda` False: never given a CUDA session (`not_on_cuda` says why); `meant_for_cuda`:
    checked and timed on the CUDA session when one is truly in use (and then not timed on CPU), else
    checked on CPU with a note that its CPU timing says nothing about its GPU speed."""

    build: Callable[..., Built]  # (ctx, src, dest, keep=()) -> Built; keep: src's nodes left in float (a repair's)
    rule: str
    atol: float | None = None
    rtol: float | None = None
    min_agreement: float | None = None
    min_cosine: float | None = None
    built_from: tuple[str, ...] = ()
    on_cuda: bool = True
    not_on_cuda: str = ""
    meant_for_cuda: bool = False
    repair: str | None = None  # how a failing build is repaired (studio/variants/_repair.py): "int8" | "fp16"
    fp16_range: bool = False  # the verdict also fails a value beyond fp16's range written or read in fp16


# Built in this order (a variant's built_from come before it). Its keys are spec.VARIANTS (a test holds them equal).
VARIANT_TABLE: dict[str, Variant] = {
    "optimized": Variant(
        build_optimized, rule="same as model.onnx: every element within atol {atol:g} + rtol {rtol:g} x |PyTorch|"
    ),
    "int8": Variant(
        build_int8,
        repair="int8",
        atol=INT8_ATOL,
        rtol=INT8_RTOL,
        min_agreement=INT8_MIN_AGREEMENT,
        min_cosine=INT8_MIN_COSINE,
        on_cuda=False,
        not_on_cuda="int8 dynamic quantization targets CPU; not timed on CUDA",
        rule="int8 cannot meet fp32's tolerance: class outputs must pick PyTorch's class on at least "
        "{agreement:.0%} of rows, and every element must be within atol {atol:g} + rtol {rtol:g} x "
        "|PyTorch|; embeddings instead need a cosine similarity of at least {cosine:g} with PyTorch on "
        "every row / real token",
    ),
    "int8-static": Variant(
        build_int8_static,
        repair="int8",
        atol=INT8_ATOL,
        rtol=INT8_RTOL,
        min_agreement=INT8_MIN_AGREEMENT,
        min_cosine=INT8_MIN_COSINE,
        on_cuda=False,
        not_on_cuda="static int8 (QDQ) is built for ONNX Runtime's CPU integer kernels; not timed on CUDA",
        rule="static int8, calibrated on the sample: as int8, class outputs must pick PyTorch's class on at least "
        "{agreement:.0%} of rows, and every element must be within atol {atol:g} + rtol {rtol:g} x |PyTorch|; "
        "embeddings instead need a cosine similarity of at least {cosine:g} with PyTorch on every row / real token",
    ),
    "fp16": Variant(
        build_fp16,
        repair="fp16",
        fp16_range=True,
        atol=FP16_ATOL,
        rtol=FP16_RTOL,
        min_agreement=FP16_MIN_AGREEMENT,
        min_cosine=FP16_MIN_COSINE,
        built_from=("optimized",),
        meant_for_cuda=True,  # fusions first, as ONNX Runtime recommends
        rule="fp16 (about 3 significant digits): every element within atol {atol:g} + rtol {rtol:g} x "
        "|PyTorch|, and class outputs must pick PyTorch's class on at least {agreement:.0%} of rows; "
        "embeddings instead need a cosine similarity of at least {cosine:g} with PyTorch on every row / "
        "real token",
    ),
}
BUILD_ORDER = tuple(VARIANT_TABLE)


# --- checking ------------------------------------------------------------------------------------


def _sessions(name: str, path: Path, ctx: Context):
    """(session to check parity on, CUDA session or None, why not CUDA, notes), as the variant's row says."""
    v = VARIANT_TABLE[name]
    notes: list[str] = []
    why: str | None = "CUDA measurements were turned off (--no-cuda)"
    cuda_sess = None
    if ctx.spec.cuda and v.on_cuda:
        made = runtime.cuda_session(path, ctx.threads)
        cuda_sess, why = made.session, made.reason
    elif not v.on_cuda:
        why = v.not_on_cuda
    if v.meant_for_cuda and cuda_sess is not None:
        return cuda_sess, cuda_sess, None, notes
    try:
        cpu = runtime.cpu_session(path, ctx.threads)
    except Exception as e:
        cpu_error = first_line(e, with_type=True)
        if cuda_sess is not None:
            return cuda_sess, cuda_sess, None, [f"The CPU provider cannot run it ({cpu_error})."]
        raise RuntimeError(
            f"not validated: ONNX Runtime's CPU provider cannot run it ({cpu_error}) and there is "
            f"no CUDA session ({why})"
        ) from e
    if v.meant_for_cuda:
        notes.append(
            f"Checked on CPU because no CUDA session is in use ({why}); {name} is built for CUDA, and its "
            "CPU timing says nothing about its GPU speed."
        )
    return cpu, cuda_sess, why, notes


def check(
    name: str,
    made: Built,
    ctx: Context,
    ref: LoadedModel,
    tensors: dict[str, torch.Tensor],
    expected: dict[str, np.ndarray],
    axes: dict[str, dict[int, str]],
    tol: Tolerance,
    info: VariantInfo,
) -> latency_mod.Target:
    """Parity and probes for one built variant; fills `info` in place. Returns how to time it: latency
    is measured afterwards, side by side with PyTorch and model.onnx (`attach_latency`)."""
    session, cuda_sess, why_not_cuda, notes = _sessions(name, made.path, ctx)
    provider = session.get_providers()[0]
    info.provider = provider
    actual = runtime.run(session, parity_mod.to_numpy(tensors))
    diffs = judge(expected, actual, tol, ref.output_kinds, parity_mod.real_tokens(ref, tensors))
    rows = next(iter(tensors.values())).shape[0]
    info.parity = ParityInfo(all(d.ok for d in diffs), tol.atol, tol.rtol, diffs, rows, provider)
    info.dynamic = parity_mod.probes(
        ref,
        session,
        tensors,
        axes,
        tol.atol,
        tol.rtol,
        judge=lambda e, a, mask: judge(e, a, tol, ref.output_kinds, mask),
    )
    target = latency_mod.Target(
        made.path, cuda_session=cuda_sess, cuda_skip=why_not_cuda if cuda_sess is None and ctx.spec.cuda else None
    )
    if VARIANT_TABLE[name].meant_for_cuda and provider != runtime.CPU:
        target.cpu_skip = f"{name} was checked and timed on CUDA"
    info.notes = " ".join(made.notes + notes)
    problems = []
    if not info.parity.ok:
        bad = [d for d in diffs if not d.ok]
        problems.append(
            "parity: "
            + "; ".join(
                f"{d.name} max abs diff {d.max_abs_diff:.3g}"
                + (f", argmax agreement {d.argmax_agreement:.1%}" if d.argmax_agreement is not None else "")
                + (f", min cosine {d.min_cosine:.6f}" if d.min_cosine is not None else "")
                for d in bad
            )
            + f" ({tol.rule})"
        )
    if info.dynamic is not None and info.dynamic.ok is False:
        problems.append("dynamic dimensions: " + "; ".join(p.message for p in info.dynamic.probes if not p.ok))
    if VARIANT_TABLE[name].fp16_range:
        problems += _fp16_range(ctx, made, info)
    info.quantized, info.cast, info.kept_float = made.quantized, made.cast, list(made.kept)
    info.ok = not problems
    if problems:
        info.error = "failed " + " | ".join(problems)
    return target


def _fp16_range(ctx: Context, made: Built, info: VariantInfo) -> list[str]:
    """The fp16 range check (studio/variants/_repair.py): values beyond +-65504 on the sample, from an fp32 run of
    the file fp16 was built from (once per file), that the fp16 file holds in fp16."""
    key = ("fp32 ranges", str(made.source))
    try:
        if key not in ctx.cache:
            values = repair_mod.Values(made.source, ctx.feeds, ctx.threads)
            ctx.cache[key] = (repair_mod.fp32_ranges(values, made.source), values.graph)
            del values
        ranges, graph = ctx.cache[key]
        bad = repair_mod.fp16_overflow(graph, ranges, set(made.kept))
    except Exception as e:  # a check of its own: the parity verdict stands without it
        info.notes = (
            info.notes + " " if info.notes else ""
        ) + f"fp16 range check not run: {first_line(e, with_type=True)}."
        return []
    if not bad:
        return []
    value, top, node = bad[0]
    return [
        f"fp16 range: {len(bad)} value(s) beyond +-{repair_mod.FP16_MAX:g} on the sample would be fp16 (largest "
        f"{top:.3g}: {value!r}, written by node {node!r}): in fp16 a computed one is inf, a constant is clamped; "
        "ONNX Runtime's CPU provider runs most fp16 operators in fp32, so a CPU check does not see it, CUDA does"
    ]


def build(
    spec: VariantOptions,
    loaded: LoadedModel,
    tensors: dict[str, torch.Tensor],
    model_path: Path,
    axes: dict[str, dict[int, str]],
    work: Path,
) -> tuple[list[VariantInfo], dict[str, latency_mod.Target]]:
    """Build and check every requested variant: one VariantInfo each, in BUILD_ORDER, and how to time each one
    that could be validated (`latency.measure_all`, then `attach_latency`)."""
    work, model_path = Path(work), Path(model_path)
    folder = work / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    threads = spec.threads or runtime.default_threads()
    ctx = Context(
        spec,
        loaded,
        model_path,
        folder,
        threads,
        external=any(f != model_path for f in artifact_files(model_path)),
        feeds=parity_mod.to_numpy(tensors),
    )
    ref = cached_reference(loaded)
    expected = parity_mod.torch_outputs(ref, tensors)
    results: list[VariantInfo] = []
    targets: dict[str, latency_mod.Target] = {}
    for name in [n for n in BUILD_ORDER if n in spec.variants]:
        variant = VARIANT_TABLE[name]
        src = next((ctx.built[b].path for b in variant.built_from if b in ctx.built), model_path)
        tol = tolerance(name, spec.atol, spec.rtol)
        dest = folder / f"model.{name}.onnx"
        info = VariantInfo(name=name, file=None, ok=False, tolerance=tol.as_dict())
        started = time.perf_counter()
        try:
            with quiet(ROOT_LOGGER):  # the quantizer and optimizers log advice to the root logger
                made = variant.build(ctx, src, dest)
        except Exception as e:
            remove_model(dest)
            reraise_disk_full(e)  # not this variant's fault: the conversion stops and says so
            info.error = f"could not be built: {first_line(e, with_type=True)}"
            results.append(info)
            continue
        info.seconds = round(time.perf_counter() - started, 2)
        _record_file(info, made, work)
        checking = _Checking(name, ctx, ref, tensors, expected, axes, tol, work)
        try:
            targets[name] = check(name, made, ctx, ref, tensors, expected, axes, tol, info)
        except Exception as e:
            info.ok = False
            info.notes = " ".join(made.notes)
            info.error = f"not validated: {first_line(e, with_type=True)}" if "not validated" not in str(e) else str(e)
        if not info.ok and spec.repair and variant.repair and made.candidates and name in targets:
            made, info = _repaired(checking, variant, src, dest, made, info, targets)
        ctx.built[name] = made
        results.append(info)
        gc.collect()
    return results, targets


def _record_file(info: VariantInfo, made: Built, work: Path) -> None:
    files = artifact_files(made.path)
    info.file = made.path.relative_to(work).as_posix()
    info.files = [f.relative_to(work).as_posix() for f in files]
    info.size_bytes = sum(f.stat().st_size for f in files)
    info.method = made.method
    info.source = made.source.relative_to(work).as_posix() if made.source.is_relative_to(work) else made.source.name


@dataclass
class _Checking:
    """What `check` needs for one variant, kept for its repair's rechecks."""

    name: str
    ctx: Context
    ref: LoadedModel
    tensors: dict[str, torch.Tensor]
    expected: dict[str, np.ndarray]
    axes: dict[str, dict[int, str]]
    tol: Tolerance
    work: Path

    def __call__(self, made: Built) -> tuple[VariantInfo, latency_mod.Target]:
        info = VariantInfo(name=self.name, file=None, ok=False, tolerance=self.tol.as_dict())
        _record_file(info, made, self.work)
        target = check(self.name, made, self.ctx, self.ref, self.tensors, self.expected, self.axes, self.tol, info)
        return info, target


# the unrepaired file of each repaired variant (id of its VariantInfo): timed beside the repaired one for the
# repair's price, then removed by attach_latency
_UNREPAIRED: dict[int, Path] = {}
UNREPAIRED = ":unrepaired"  # suffix of its latency target's name


def _repaired(
    checking: _Checking,
    variant: Variant,
    src: Path,
    dest: Path,
    made: Built,
    info: VariantInfo,
    targets: dict[str, latency_mod.Target],
) -> tuple[Built, VariantInfo]:
    """The repair of a variant that failed (studio/variants/_repair.py): the file kept (passing, else the best
    reached) and its VariantInfo with `repair` filled in; the unrepaired file is kept aside for timing."""
    name, ctx = checking.name, checking.ctx
    unrepaired = dest.with_name(f".{dest.stem}.unrepaired.onnx")
    move_model(dest, unrepaired)
    failed = replace(made, path=unrepaired)
    started = time.perf_counter()
    fp32 = repair_mod.Values(src, ctx.feeds, ctx.threads)
    first: list[str] = []
    if variant.repair == "fp16":
        _fp16_range(ctx, made, info)  # fills the cache
        ranges, graph = ctx.cache.get(("fp32 ranges", str(made.source)), ({}, None))
        if graph is not None:
            first = repair_mod.fp16_keep(graph, repair_mod.fp16_overflow(graph, ranges, set()))

    def rebuild(kept: list[str]) -> Built:
        with quiet(ROOT_LOGGER):
            return variant.build(ctx, src, dest, keep=tuple(kept))

    def scores(built: Built, kept: set[str]) -> list[tuple[str, float]]:
        current = repair_mod.Values(built.path, ctx.feeds, ctx.threads)
        return repair_mod.rank(fp32, current, built.candidates, kept)

    plan = repair_mod.Repair(
        rebuild, checking, scores, first, max_rounds=repair_mod.MAX_ROUNDS, max_seconds=repair_mod.MAX_SECONDS
    )
    chosen, chosen_made, report = repair_mod.run(plan, repair_mod.Attempt([], info, targets[name]), failed)
    if chosen.info is info:  # no round did better: the unrepaired file stays the variant
        move_model(unrepaired, dest)
        chosen_made = made
    else:
        targets[name] = chosen.target
        _UNREPAIRED[id(chosen.info)] = unrepaired
        targets[name + UNREPAIRED] = latency_mod.Target(
            unrepaired, cpu_skip=chosen.target.cpu_skip, cuda_skip="the unrepaired file is timed on CPU only"
        )
    report["seconds"] = round(time.perf_counter() - started, 2)
    report["size_bytes"] = chosen.info.size_bytes
    chosen.info.repair = report
    chosen.info.seconds = round((info.seconds or 0) + report["seconds"], 2)
    return chosen_made, chosen.info


def attach_latency(results: list[VariantInfo], timed: dict[str, LatencyInfo], baseline: LatencyInfo) -> None:
    """Give each variant its latency (from `latency.measure_all`: timed side by side with its own PyTorch
    run) and its speedups at the sample's batch: over PyTorch measured in that pair, over model.onnx
    through PyTorch (this variant's speedup over PyTorch / model.onnx's, each from its own pair), since the
    two files were timed one after the other, each beside PyTorch. A repaired variant gets the price of its
    repair (its unrepaired file was timed the same way; then removed), and the one to take is marked."""
    fp32 = _speedup(baseline.torch_cpu, baseline.ort_cpu)
    for info in results:
        info.latency = timed.get(info.name)
        lat = info.latency
        mine = _speedup(lat.torch_cpu, lat.ort_cpu) if lat else None
        if mine is not None:
            info.speedup_vs_torch = round(mine, 2)
            info.speedup_vs_fp32 = round(mine / fp32, 2) if fp32 else None
        unrepaired = _UNREPAIRED.pop(id(info), None)
        if unrepaired is not None:
            _price(info, timed.get(info.name + UNREPAIRED), mine)
            remove_model(unrepaired)
    _mark_take(results)


def _price(info: VariantInfo, before: LatencyInfo | None, mine: float | None) -> None:
    """The repair's price in speed: ORT CPU p50 of the unrepaired and the repaired file, and how many times slower
    the repaired one is, through PyTorch (each file's speedup over PyTorch in its own pair)."""
    theirs = _speedup(before.torch_cpu, before.ort_cpu) if before else None
    after = info.latency.ort_cpu if info.latency else None
    info.repair["p50_ms_before"] = round(before.ort_cpu.p50_ms, 3) if before and before.ort_cpu else None
    info.repair["p50_ms"] = round(after.p50_ms, 3) if after else None
    info.repair["slowdown"] = round(theirs / mine, 3) if theirs and mine else None


def _mark_take(results: list[VariantInfo]) -> None:
    """`take` on the variant to take on this CPU: passing, timed on CPU (not a CUDA variant), the fastest, and
    faster than model.onnx; none when no variant is."""
    timed = [
        v
        for v in results
        if v.ok and v.speedup_vs_fp32 and not VARIANT_TABLE[v.name].meant_for_cuda and v.latency and v.latency.ort_cpu
    ]
    best = max(timed, key=lambda v: v.speedup_vs_fp32 or 0.0, default=None)
    for v in results:
        v.take = v is best and (best.speedup_vs_fp32 or 0.0) > 1.0


def _speedup(torch_t, ort_t) -> float | None:
    """PyTorch's p50 over ORT's (None when either is missing or not positive)."""
    if torch_t is None or ort_t is None or torch_t.p50_ms <= 0 or ort_t.p50_ms <= 0:
        return None
    return torch_t.p50_ms / ort_t.p50_ms
