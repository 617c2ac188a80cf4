"""Faster artifacts beside model.onnx: ORT-optimized, int8 and fp16, each with its own checks.

Each variant is declared once, in VARIANT_TABLE (a `Variant` each: its builder, what it is built from, its
verdict rule, where it runs); `build`, `check` and `tolerance` read the table and never compare names. A new
variant is a builder function and one row there (and its name in spec.VARIANTS).

`build(spec, loaded, tensors, model_path, axes, work)` is called by `pipeline.convert` when
`spec.variants` is non-empty. Files go to `<out>/variants/model.<name>.onnx` (+ `.onnx.data` when the
weights are external, as model.onnx's are); `VariantInfo.file` is relative to the output folder.
Every variant gets the same checks as model.onnx: parity with PyTorch on the sample rows and the
dynamic-dimension probes; `build` also returns how to time each one, and the pipeline's latency stage
times them side by side with PyTorch and model.onnx (ORT CPU at the sample's batch and at batch 1, ORT
CUDA with IO binding when CUDA is truly in use); `attach_latency` adds their speedups over both.
A variant that misses its tolerance is reported as failed (and fails the conversion), never hidden;
one that cannot be built is reported with the reason.

How each is built
- optimized: transformer fusions for ONNX Runtime (Attention, SkipLayerNormalization, BiasGelu, ...).
  Two fusers are tried and the better result is kept (fused attention first, then most fused nodes):
  onnxscript's ORT fusions (`onnxscript.rewriter.ort_fusions`, written for graphs from the new
  torch.export-based exporter; it works on the lazily loaded graph, so memory stays low) and
  `onnxruntime.transformers.optimizer` (its patterns match the legacy TorchScript exporter's graphs;
  BERT-family architectures only; it holds several copies of the weights in memory, so it is skipped for
  models above TRANSFORMERS_OPTIMIZER_MAX_BYTES). When neither fuses anything, ONNX Runtime's own graph
  optimisations (level "extended": no hardware-specific layouts) are applied and saved offline.
  `VariantInfo.method` and `.notes` say which path was taken and what was fused.
- int8: `onnxruntime.quantization.quantize_dynamic`: int8 weights (per output channel), activations
  quantized on the fly at run time. For CPU. Built from model.onnx (fp32), whose erf-GELUs are first fused
  into ONNX Runtime's Gelu contrib op (`_with_fused_gelu`: ONNX Runtime does not fuse the exporter's form
  itself, and unfused they cost bert-base's int8 a quarter of its time).
- fp16: `onnxruntime.transformers` float16 conversion with keep_io_types (inputs and outputs keep
  model.onnx's types, so the same feeds and post-processing work). For CUDA. Built from the optimized
  graph when that variant was built in the same run (fusions first, as ONNX Runtime recommends), else
  from model.onnx. Checked on CUDA when a CUDA session is truly in use, else on CPU (ONNX Runtime's CPU
  provider runs it, slowly: its CPU timing is no measure of fp16 on a GPU).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from . import graph_info, runtime
from . import latency as latency_mod
from . import parity as parity_mod
from .artifacts import artifact_files, remove_model
from .errors import first_line
from .parity import Tolerance, cached_reference, judge
from .quiet import quiet
from .report import LatencyInfo, ParityInfo, VariantInfo
from .sources.base import LoadedModel

FOLDER = "variants"
ROOT_LOGGER = ("",)  # quiet(): the root logger

INT8_ATOL, INT8_RTOL, INT8_MIN_AGREEMENT = 0.1, 0.1, 0.99
FP16_ATOL, FP16_RTOL, FP16_MIN_AGREEMENT = 1e-2, 1e-2, 0.99
INT8_MIN_COSINE, FP16_MIN_COSINE = 0.97, 0.999  # embeddings' verdict for int8 / fp16 (module docstring)
INT8_PER_CHANNEL = True
# onnxruntime.transformers.optimizer loads the whole model as a protobuf and copies it while fusing
# (bert-base, 0.44 GB of weights: 2.5 GB peak RSS): only tried below this many bytes of weights.
TRANSFORMERS_OPTIMIZER_MAX_BYTES = 256 * 1024**2
# model_type (transformers config) -> onnxruntime.transformers.optimizer model_type
TRANSFORMERS_TYPES = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "distilbert": "bert",
    "camembert": "bert",
    "electra": "bert",
    "albert": "bert",
    "mpnet": "bert",
}
FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "GroupQueryAttention",
    "PackedAttention",
    "PackedMultiHeadAttention",
    "EmbedLayerNormalization",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "SimplifiedLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "GemmFastGelu",
    "QuickGelu",
    "BiasSplitGelu",
    "BiasAdd",
    "RotaryEmbedding",
    "FusedMatMul",
    "FusedGemm",
    "FusedConv",
)
ATTENTION_OPS = (
    "Attention",
    "MultiHeadAttention",
    "GroupQueryAttention",
    "PackedAttention",
    "PackedMultiHeadAttention",
)


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


# --- building ------------------------------------------------------------------------------------


@dataclass
class Built:
    path: Path
    method: str
    source: Path
    notes: list[str] = field(default_factory=list)


@dataclass
class Context:
    spec: Any
    loaded: LoadedModel
    model_path: Path
    folder: Path
    threads: int
    external: bool  # model.onnx keeps its weights in external data: so do the variants
    built: dict[str, Built] = field(default_factory=dict)


def _files(path: Path) -> list[Path]:
    return artifact_files(path)


def _op_counts(path: Path) -> dict[str, int]:
    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def _fused(path: Path) -> dict[str, int]:
    counts = _op_counts(path)
    return {op: counts[op] for op in FUSED_OPS if counts.get(op)}


def _score(fused: dict[str, int]) -> tuple[int, int]:
    return sum(fused.get(op, 0) for op in ATTENTION_OPS), sum(fused.values())


def _describe(fused: dict[str, int]) -> str:
    return ", ".join(f"{op} x{n}" for op, n in sorted(fused.items(), key=lambda kv: -kv[1])) or "nothing"


def _onnxscript_fusions(src: Path, dest: Path, external: bool) -> None:
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = ir.load(str(src))
    model, _counts = optimize_for_ort(model)
    if external:
        ir.save(model, str(dest), external_data=dest.name + ".data")
    else:
        ir.save(model, str(dest))


def _transformers_optimizer(src: Path, dest: Path, external: bool, loaded: LoadedModel) -> str:
    from onnxruntime.transformers.optimizer import optimize_model

    cfg = getattr(loaded.module, "config", None)
    model_type = TRANSFORMERS_TYPES[getattr(cfg, "model_type", "")]
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_heads", None) or 0
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "dim", None) or 0
    # opt_level 0: the Python fusions only; ONNX Runtime's own passes run when the session loads it
    om = optimize_model(str(src), model_type=model_type, num_heads=int(heads), hidden_size=int(hidden), opt_level=0)
    om.save_model_to_file(str(dest), use_external_data_format=external)
    return model_type


def _transformers_eligible(ctx: Context) -> str | None:
    """None when onnxruntime.transformers.optimizer may be tried, else why not."""
    model_type = getattr(getattr(ctx.loaded.module, "config", None), "model_type", None)
    if model_type not in TRANSFORMERS_TYPES:
        return f"no fusion patterns for {model_type or 'this architecture'}"
    weights = sum(f.stat().st_size for f in _files(ctx.model_path))
    if weights > TRANSFORMERS_OPTIMIZER_MAX_BYTES:
        return f"skipped: the model is {weights / 1e9:.2f} GB and this optimizer holds several copies of it in memory"
    return None


def build_optimized(ctx: Context, src: Path, dest: Path) -> Built:
    candidates: list[tuple[tuple[int, int], Path, str, dict[str, int]]] = []
    notes: list[str] = []
    tries: list[tuple[str, Callable[[Path], Any]]] = [
        ("onnxscript ORT fusions", lambda p: _onnxscript_fusions(src, p, ctx.external))
    ]
    why_not = _transformers_eligible(ctx)
    if why_not is None:
        tries.append(
            ("onnxruntime.transformers.optimizer", lambda p: _transformers_optimizer(src, p, ctx.external, ctx.loaded))
        )
    else:
        notes.append(f"onnxruntime.transformers.optimizer: {why_not}.")
    for k, (label, run) in enumerate(tries):
        tmp = dest.with_name(f".{dest.stem}.candidate{k}.onnx")
        try:
            run(tmp)
            fused = _fused(tmp)
        except Exception as e:
            notes.append(f"{label} failed: {first_line(e, with_type=True)}.")
            remove_model(tmp)
            continue
        candidates.append((_score(fused), tmp, label, fused))
        gc.collect()
    best = max(candidates, key=lambda c: c[0], default=None)
    for _, tmp, label, fused in candidates:
        if best is None or tmp != best[1]:
            notes.append(f"{label} fused {_describe(fused)} (not kept).")
            remove_model(tmp)
    if best is not None and best[0][1] > 0:
        score, tmp, label, fused = best
        _move(tmp, dest)
        if not score[0]:
            notes.append("Attention was not fused (no known pattern matched this graph).")
        notes.insert(
            0,
            f"{label} fused {_describe(fused)}. Fused operators are ONNX Runtime contrib ops "
            "(com.microsoft): this file runs on ONNX Runtime only.",
        )
        return Built(dest, label, src, notes)
    if best is not None:
        remove_model(best[1])
    runtime.save_optimized(src, dest, ctx.threads, level="extended", external_data=ctx.external)
    notes.insert(
        0,
        "No transformer fusion matched this graph: ONNX Runtime graph optimisations (level extended, "
        "no hardware-specific layouts) were applied and saved offline; model.onnx gets the same ones "
        "when a session loads it, so expect the same speed and a faster session start. "
        f"Fused: {_describe(_fused(dest))}.",
    )
    return Built(dest, "onnxruntime offline graph optimisation (extended)", src, notes)


def _move(tmp: Path, dest: Path) -> None:
    """Rename a candidate (and its external data, whose file name is written inside the graph)."""
    if Path(str(tmp) + ".data").exists():
        model = onnx.load(str(tmp), load_external_data=False)
        for t in graph_info.tensors(model):
            if onnx.external_data_helper.uses_external_data(t):
                for e in t.external_data:
                    if e.key == "location":
                        e.value = dest.name + ".data"
        Path(str(tmp) + ".data").replace(Path(str(dest) + ".data"))
        onnx.save(model, str(dest))
        tmp.unlink()
    else:
        tmp.replace(dest)


def _without_value_info(src: Path) -> Path:
    """A copy of the graph (beside it, sharing its external data) without value_info.

    quantize_dynamic rewrites Gemm(transB=1) as MatMul and transposes the weight in place under the same
    name; the exporter's recorded value_info for that weight then contradicts shape inference
    ("Inferred shape and existing shape differ"). Shapes are re-inferred anyway."""
    model = onnx.load(str(src), load_external_data=False)
    del model.graph.value_info[:]
    tmp = src.with_name(f".{src.stem}.q-src.onnx")
    onnx.save(model, str(tmp))
    return tmp


def _with_fused_gelu(src: Path) -> tuple[Path | None, int]:
    """A copy of the graph (beside it, sharing its external data) whose erf-GELUs are one com.microsoft Gelu
    each (onnxscript's `fuse_erfgelu`), and how many were fused; (None, 0) when there is none to fuse.

    The exporter writes GELU as x * (0.5 * (1 + erf(x / sqrt 2))); ONNX Runtime's own GeluFusion only knows
    the orders (0.5 * x) * (...) and (x * (...)) * 0.5, so in an int8 graph the five element-wise ops stay
    separate and cost about as much as a third of the quantized matrix products (bert-base: int8 25% faster
    with them fused). Nothing else is fused: ONNX Runtime folds the bias into the quantized product itself."""
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions.erfgelu import fuse_erfgelu

    model = ir.load(str(src))
    count = fuse_erfgelu(model)
    if not count:
        return None, 0
    tmp = src.with_name(f".{src.stem}.gelu.onnx")
    ir.save(model, str(tmp))  # external tensors keep pointing at src's .data file (same folder)
    return tmp, count


def build_int8(ctx: Context, src: Path, dest: Path) -> Built:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        fused, gelus, why = *_with_fused_gelu(src), None
    except Exception as e:  # a speed-up only: quantize the graph as exported
        fused, gelus, why = None, 0, first_line(e, with_type=True)
    tmp = _without_value_info(fused or src)
    try:
        quantize_dynamic(
            str(tmp),
            str(dest),
            weight_type=QuantType.QInt8,
            per_channel=INT8_PER_CHANNEL,
            use_external_data_format=ctx.external,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        tmp.unlink(missing_ok=True)
        if fused is not None:
            fused.unlink(missing_ok=True)
    quantized = _op_counts(dest)
    n = quantized.get("MatMulInteger", 0) + quantized.get("QAttention", 0) + quantized.get("DynamicQuantizeMatMul", 0)
    notes = [
        f"Weights int8 ({'per channel' if INT8_PER_CHANNEL else 'per tensor'}), activations quantized at run "
        f"time (dynamic); {n} matrix products quantized. Meant for CPU."
    ]
    if gelus:
        notes.append(
            f"GELU x{gelus} fused into ONNX Runtime's Gelu contrib op (com.microsoft) before quantizing "
            "(the exporter's form is not fused by ONNX Runtime itself): this file runs on ONNX Runtime only."
        )
    if why:
        notes.append(f"GELU fusion before quantizing failed ({why}); quantized as exported.")
    return Built(dest, "onnxruntime dynamic quantization (int8)", src, notes)


def build_fp16(ctx: Context, src: Path, dest: Path) -> Built:
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src))  # with its weights: every float tensor is rewritten
    om = OnnxModel(model)
    om.convert_float_to_float16(use_symbolic_shape_infer=True, keep_io_types=True)
    om.save_model_to_file(str(dest), use_external_data_format=ctx.external)
    del om, model
    notes = ["Float tensors fp16; inputs and outputs keep model.onnx's types (keep_io_types). Meant for CUDA."]
    return Built(dest, "onnxruntime.transformers float16 conversion", src, notes)


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

    build: Callable[[Context, Path, Path], Built]
    rule: str
    atol: float | None = None
    rtol: float | None = None
    min_agreement: float | None = None
    min_cosine: float | None = None
    built_from: tuple[str, ...] = ()
    on_cuda: bool = True
    not_on_cuda: str = ""
    meant_for_cuda: bool = False


# Built in this order (a variant's built_from come before it). Its keys are spec.VARIANTS (a test holds them equal).
VARIANT_TABLE: dict[str, Variant] = {
    "optimized": Variant(
        build_optimized, rule="same as model.onnx: every element within atol {atol:g} + rtol {rtol:g} x |PyTorch|"
    ),
    "int8": Variant(
        build_int8,
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
    "fp16": Variant(
        build_fp16,
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
    cuda_sess, why = None, "CUDA measurements were turned off (--no-cuda)"
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
    info.ok = not problems
    if problems:
        info.error = "failed " + " | ".join(problems)
    return target


def build(
    spec,
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
    ctx = Context(spec, loaded, model_path, folder, threads, external=any(f != model_path for f in _files(model_path)))
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
            info.error = f"could not be built: {first_line(e, with_type=True)}"
            results.append(info)
            continue
        info.seconds = round(time.perf_counter() - started, 2)
        ctx.built[name] = made
        files = _files(made.path)
        info.file = made.path.relative_to(work).as_posix()
        info.files = [f.relative_to(work).as_posix() for f in files]
        info.size_bytes = sum(f.stat().st_size for f in files)
        info.method = made.method
        info.source = made.source.relative_to(work).as_posix() if made.source.is_relative_to(work) else made.source.name
        try:
            targets[name] = check(name, made, ctx, ref, tensors, expected, axes, tol, info)
        except Exception as e:
            info.ok = False
            info.notes = " ".join(made.notes)
            info.error = f"not validated: {first_line(e, with_type=True)}" if "not validated" not in str(e) else str(e)
        results.append(info)
        gc.collect()
    return results, targets


def attach_latency(results: list[VariantInfo], timed: dict[str, LatencyInfo], baseline: LatencyInfo) -> None:
    """Give each variant its latency (from `latency.measure_all`, timed side by side with PyTorch and
    model.onnx) and its speedups over both at the sample's batch."""
    for info in results:
        info.latency = timed.get(info.name)
        mine = info.latency.ort_cpu if info.latency else None
        if mine is None or mine.p50_ms <= 0:
            continue
        if baseline.torch_cpu is not None:
            info.speedup_vs_torch = round(baseline.torch_cpu.p50_ms / mine.p50_ms, 2)
        if baseline.ort_cpu is not None:
            info.speedup_vs_fp32 = round(baseline.ort_cpu.p50_ms / mine.p50_ms, 2)
