"""The variants' builders: each writes one faster file from model.onnx (or from a variant built before it).

`build_optimized`, `build_int8` and `build_fp16` are the `build` of their VARIANT_TABLE rows
(studio/variants/table.py), which also says what each is built from, its verdict and where it runs; each
returns a `Built` (the file, how it was made, from what, notes for the report). `Context` is what a
builder may read about the run.

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
- int8: `studio/variants/_int8.py`: int8 weights (per output column), activations quantized on the fly at run time
  by ONNX Runtime's DynamicQuantizeMatMul, one weight in memory at a time; a graph it finds nothing to
  quantize in goes to `onnxruntime.quantization.quantize_dynamic`. For CPU. Built from model.onnx (fp32),
  whose erf-GELUs are first fused into ONNX Runtime's Gelu contrib op (`_fuse_gelu`: ONNX Runtime does not
  fuse the exporter's form itself, and unfused they cost bert-base's int8 a quarter of its time).
- fp16: `onnxruntime.transformers` float16 conversion with keep_io_types (inputs and outputs keep
  model.onnx's types, so the same feeds and post-processing work). For CUDA. Built from the optimized
  graph when that variant was built in the same run (fusions first, as ONNX Runtime recommends), else
  from model.onnx. Checked on CUDA when a CUDA session is truly in use, else on CPU (ONNX Runtime's CPU
  provider runs it, slowly: its CPU timing is no measure of fp16 on a GPU).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx

from studio.artifacts import artifact_files, remove_model, reraise_disk_full
from studio.checks import graph_info, runtime
from studio.errors import first_line
from studio.sources.base import LoadedModel
from studio.spec import VariantOptions

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


class NothingChanged(Exception):
    """A variant that would change nothing: refused, never passed as that variant."""


class Candidate(NamedTuple):
    """A node a repair may keep in float (studio/variants/_repair.py): its name in the graph the variant is built
    from, the activations it reads and the values it writes (names found in both that graph and the variant)."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass
class Built:
    """What a builder made: the file, how, from which file, and notes for the report. quantized / cast: how many
    operators it quantized / tensors it made fp16 (None: not that kind of variant); kept: the nodes of `source`
    it was asked to keep in float (a repair's); candidates: the nodes a repair may keep in float."""

    path: Path
    method: str
    source: Path
    notes: list[str] = field(default_factory=list)
    quantized: int | None = None
    cast: int | None = None
    kept: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)


@dataclass
class Context:
    """What a builder may read about the run (and the variants built so far in it)."""

    spec: VariantOptions
    loaded: LoadedModel
    model_path: Path
    folder: Path
    threads: int
    external: bool  # model.onnx keeps its weights in external data: so do the variants
    built: dict[str, Built] = field(default_factory=dict)
    feeds: dict[str, np.ndarray] = field(default_factory=dict)  # the sample's tensors (static int8 calibrates on them)
    cache: dict[Any, Any] = field(default_factory=dict)  # what a check measured once per source file (fp32 ranges)


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
    weights = sum(f.stat().st_size for f in artifact_files(ctx.model_path))
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
            reraise_disk_full(e)
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
        move_model(tmp, dest)
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


def move_model(tmp: Path, dest: Path) -> None:
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


def _fuse_gelu(model) -> int:
    """Fuse `model`'s (an onnx_ir model) erf-GELUs into one com.microsoft Gelu each (onnxscript's
    `fuse_erfgelu`), in place; how many.

    The exporter writes GELU as x * (0.5 * (1 + erf(x / sqrt 2))); ONNX Runtime's own GeluFusion only knows
    the orders (0.5 * x) * (...) and (x * (...)) * 0.5, so in an int8 graph the five element-wise ops stay
    separate and cost about as much as a third of the quantized matrix products (bert-base: int8 25% faster
    with them fused).

    The rules are made anew for each call from erfgelu's own patterns: its module-level rules' matchers keep the
    last graph they matched (`SimplePatternMatcher._graph`), and with it every tensor of the int8 graph built
    from it (bert-base: 0.11 GB held through the latency stage, measured)."""
    from onnxscript.rewriter import pattern
    from onnxscript.rewriter.ort_fusions import erfgelu

    patterns = (erfgelu.erf_gelu_pattern_1, erfgelu.erf_gelu_pattern_2)
    rules = pattern.RewriteRuleSet([pattern.RewriteRule(p, erfgelu.gelu) for p in patterns])
    return rules.apply_to_model(model)


def with_fused_gelu(src: Path, lift: bool = False) -> tuple[Path | None, int]:
    """A copy of the graph (beside it, sharing its external data) with its erf-GELUs fused (_fuse_gelu), and
    how many were fused; (None, 0) when there is nothing to change. For quantize_dynamic / quantize_static, which
    read a file. lift: Constant-node weights become initializers too (_int8.lift_constants: ONNX Runtime's
    quantizers take a weight in a Constant node for an activation)."""
    import onnx_ir as ir

    from studio.variants import _int8 as int8

    model = ir.load(str(src))
    lifted = int8.lift_constants(model) if lift else 0
    count = _fuse_gelu(model)
    if not count and not lifted:
        return None, 0
    tmp = src.with_name(f".{src.stem}.gelu.onnx")
    ir.save(model, str(tmp))  # external tensors keep pointing at src's .data file (same folder)
    return tmp, count


def gelu_notes(gelus: int, why: str | None) -> list[str]:
    notes = []
    if gelus:
        notes.append(
            f"GELU x{gelus} fused into ONNX Runtime's Gelu contrib op (com.microsoft) before quantizing "
            "(the exporter's form is not fused by ONNX Runtime itself): this file runs on ONNX Runtime only."
        )
    if why:
        notes.append(f"GELU fusion before quantizing failed ({why}); quantized as exported.")
    return notes


def _kept_note(keep: tuple[str, ...], what: str) -> list[str]:
    return [f"{len(keep)} node(s) kept in {what} by the repair: {', '.join(keep)}."] if keep else []


def build_int8(ctx: Context, src: Path, dest: Path, keep: tuple[str, ...] = ()) -> Built:
    """studio/variants/_int8.py (one weight at a time: bert-base 0.19 GB peak, 0.8 s); a graph with no constant-weight
    matrix product for it (convolutions only, say) goes to ONNX Runtime's quantize_dynamic instead. keep: names of
    src's nodes left fp32 (a repair's, studio/variants/_repair.py)."""
    import onnx_ir as ir

    from studio.variants import _int8 as int8

    model = ir.load(str(src))
    try:
        gelus, why = _fuse_gelu(model), None
    except Exception as e:  # a speed-up only: quantize the graph as exported
        model, gelus, why = ir.load(str(src)), 0, first_line(e, with_type=True)
    products: list[tuple[str, str, str]] = []
    n = int8.quantize_graph(model, exclude=frozenset(keep), record=products)
    if not n and not products:
        del model
        return _int8_by_onnxruntime(ctx, src, dest, keep)
    if not n:
        raise NothingChanged("every quantizable node was kept in float: the int8 file would be the fp32 one")
    int8.save(model, dest, ctx.external)
    notes = [
        "Weights int8 (symmetric, one scale per output column), activations quantized at run time inside ONNX "
        f"Runtime's DynamicQuantizeMatMul (com.microsoft): {n} matrix products quantized, their bias adds "
        "folded in; products of two activations stay fp32. ONNX Runtime only; meant for CPU."
    ]
    return Built(
        dest,
        "int8 weights, DynamicQuantizeMatMul (studio/variants/_int8.py)",
        src,
        notes + _kept_note(keep, "fp32") + gelu_notes(gelus, why),
        quantized=n,
        kept=list(keep),
        candidates=[Candidate(name, (a,), (y,)) for name, a, y in products if name],
    )


def weight_products(path: Path) -> list[Candidate]:
    """The named MatMul / Gemm / Conv nodes of a graph whose weight (second input) is a constant: what ONNX
    Runtime's quantizers quantize, each with its activation input and its output (names they keep)."""
    model = onnx.load(str(path), load_external_data=False)
    consts = {t.name for t in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [
        Candidate(n.name, (n.input[0],), (n.output[0],))
        for n in model.graph.node
        if n.name and n.op_type in ("MatMul", "Gemm", "Conv") and len(n.input) > 1 and n.input[1] in consts
    ]


def _int8_by_onnxruntime(ctx: Context, src: Path, dest: Path, keep: tuple[str, ...] = ()) -> Built:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        fused, gelus, why = *with_fused_gelu(src), None
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
            nodes_to_exclude=list(keep),
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        tmp.unlink(missing_ok=True)
        if fused is not None:
            fused.unlink(missing_ok=True)
    quantized = _op_counts(dest)
    n = quantized.get("MatMulInteger", 0) + quantized.get("QAttention", 0) + quantized.get("DynamicQuantizeMatMul", 0)
    n += quantized.get("ConvInteger", 0)
    if not n:
        remove_model(dest)
        raise NothingChanged(
            "no operator was quantized (the graph has no matrix product or convolution with a constant weight), "
            "so the int8 file would be the fp32 one under a new name; none is written"
        )
    notes = [
        f"Weights int8 ({'per channel' if INT8_PER_CHANNEL else 'per tensor'}), activations quantized at run "
        f"time (dynamic); {n} operators quantized by ONNX Runtime's quantize_dynamic (no constant-weight "
        "matrix product for studio/variants/_int8.py). Meant for CPU."
    ]
    return Built(
        dest,
        "onnxruntime dynamic quantization (int8)",
        src,
        notes + _kept_note(keep, "fp32") + gelu_notes(gelus, why),
        quantized=n,
        kept=list(keep),
        candidates=weight_products(src),
    )


def unique_node_names(graph: onnx.GraphProto) -> int:
    """The fp16 converter names the Cast it adds in front of a blocked node after the value it casts, so two blocked
    nodes reading one value (a repair's node_block_list on an ORT-fused graph) get two identical Casts (one node
    name, one output name), which ONNX Runtime refuses. Drop a node that repeats an earlier one exactly (its
    consumers read the one output name either way), then rename any node whose name an earlier node has
    (name_1, ...). Returns how many nodes were dropped or renamed."""
    kept: list[onnx.NodeProto] = []
    seen: set[str] = set()
    made: set[str] = set()
    changed = 0
    for node in graph.node:
        if any(o in made for o in node.output if o):
            twin = next(k for k in kept if set(k.output) & set(node.output))
            if twin.SerializeToString() == node.SerializeToString():
                changed += 1
                continue
        made.update(o for o in node.output if o)
        kept.append(node)
    names = {n.name for n in kept}
    for node in kept:
        if node.name and node.name in seen:
            k = 1
            while f"{node.name}_{k}" in names:
                k += 1
            node.name = f"{node.name}_{k}"
            names.add(node.name)
            changed += 1
        seen.add(node.name)
    if len(kept) != len(graph.node):
        copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in kept]
        del graph.node[:]
        graph.node.extend(copies)
    return changed


def build_fp16(ctx: Context, src: Path, dest: Path, keep: tuple[str, ...] = ()) -> Built:
    """keep: names of src's nodes left fp32 (a repair's: node_block_list), with casts around them."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src))  # with its weights: every float tensor is rewritten
    om = OnnxModel(model)
    om.convert_float_to_float16(
        use_symbolic_shape_infer=True, keep_io_types=True, **({"node_block_list": list(keep)} if keep else {})
    )
    unique_node_names(om.model.graph)
    om.save_model_to_file(str(dest), use_external_data_format=ctx.external)
    del om, model
    saved = onnx.load(str(dest), load_external_data=False)
    halves = sum(t.data_type == onnx.TensorProto.FLOAT16 for t in saved.graph.initializer)
    halves += sum(
        n.op_type == "Constant" and any(a.t.data_type == onnx.TensorProto.FLOAT16 for a in n.attribute)
        for n in saved.graph.node
    )
    casts = sum(
        n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)
        for n in saved.graph.node
    )
    del saved
    if not halves and not casts:
        remove_model(dest)
        raise NothingChanged(
            "no tensor became fp16 (the graph holds no float weight or value to convert), so the fp16 file would "
            "be the fp32 one under a new name; none is written"
        )
    notes = [
        f"Float tensors fp16 ({halves} weights fp16, {casts} casts to fp16); inputs and outputs keep model.onnx's "
        "types (keep_io_types). Meant for CUDA."
    ]
    return Built(
        dest,
        "onnxruntime.transformers float16 conversion",
        src,
        notes + _kept_note(keep, "fp32 (node_block_list)"),
        cast=halves + casts,
        kept=list(keep),
        candidates=float_nodes(src),
    )


def float_nodes(path: Path) -> list[Candidate]:
    """Every named node of a graph but its Constants: what an fp16 repair may keep in fp32, with the values it
    reads (not the constants) and writes."""
    model = onnx.load(str(path), load_external_data=False)
    consts = {t.name for t in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [
        Candidate(n.name, tuple(i for i in n.input if i and i not in consts), tuple(o for o in n.output if o))
        for n in model.graph.node
        if n.name and n.op_type != "Constant"
    ]
