"""Dynamic int8 quantization of an ONNX graph's matrix products, one weight at a time.

Every MatMul / Gemm whose weight is a constant 2-D float tensor becomes ONNX Runtime's
`com.microsoft.DynamicQuantizeMatMul`: the weight stored int8, symmetric, one scale per output column
(zero point 0), the activation quantized to uint8 at run time by the kernel itself; a bias Add right after
the product (or Gemm's C) goes into the node as its bias. This is what `onnxruntime.quantization.
quantize_dynamic` produces for these nodes once ONNX Runtime has fused its MatMulInteger pattern, but built
differently: the graph is loaded with onnx_ir, whose external tensors are memory-mapped and read only when
quantized (then unmapped), so at most one fp32 weight is in memory at a time, and the file is written once.
`quantize_dynamic` deep-copies the model and reloads it to re-infer shapes: for bert-base (0.44 GB of
weights) it peaked at 1.42 GB on its own and took 15 s, against 0.19 GB and 0.8 s here (same speed in ONNX
Runtime, max abs diff to PyTorch 0.013 against its 0.020; benchmarks/README.md).

Matrix products of two activations (attention scores) stay fp32: quantizing both sides at run time made
them slower in ONNX Runtime, not faster (bert-base: 53 ms against 46 ms per 8x128 call). A graph with no
such weight to quantize (convolutions only, say) is left to `quantize_dynamic` by the caller
(variant_builders.build_int8).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx_ir as ir

MS_DOMAIN = "com.microsoft"
QMAX = 127  # symmetric int8: [-127, 127], as ONNX Runtime's QInt8 weights


def quantize_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight, float32 scale per column) for a [K, N] float weight: w ~= q * scale."""
    amax = np.abs(w).max(axis=0)
    scale = np.where(amax > 0, amax / QMAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -QMAX, QMAX).astype(np.int8)
    return q, scale


def _constant(graph: ir.Graph, v: ir.Value | None) -> ir.TensorProtocol | None:
    """The tensor `v` holds when it is a constant (an initializer, not a graph input), else None."""
    if v is None or v.producer() is not None or v in graph.inputs:
        return None
    return v.const_value


def _through_identity(graph: ir.Graph, v: ir.Value | None) -> ir.Value | None:
    """The constant behind a chain of Identity nodes (the legacy exporter routes shared biases so)."""
    while v is not None and (p := v.producer()) is not None and p.op_type == "Identity" and p.domain in ("", "ai.onnx"):
        v = p.inputs[0]
    return v


class _Product(NamedTuple):
    """A matrix product this module quantizes: its activation, its constant weight (value and tensor), whether
    the weight is transposed (Gemm's transB), and Gemm's bias."""

    activation: ir.Value
    weight: ir.Value
    tensor: ir.TensorProtocol
    transposed: bool
    bias: ir.Value | None


def _weight(graph: ir.Graph, node: ir.Node) -> _Product | None:
    """The product `node` is, when it is one this module quantizes."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "MatMul" and len(node.inputs) == 2:
        a, b = node.inputs
        bias, transposed = None, False
    elif node.op_type == "Gemm" and len(node.inputs) >= 2:
        attrs = {k: a.value for k, a in node.attributes.items()}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return None
        a, b = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        transposed = bool(attrs.get("transB", 0))
        if bias is not None and ((c := _constant(graph, bias)) is None or len(c.shape) != 1):
            return None
    else:
        return None
    w = _constant(graph, b)
    if a is None or b is None or w is None or w.dtype != ir.DataType.FLOAT or len(w.shape) != 2:
        return None
    return _Product(a, b, w, transposed, bias)


def _following_bias(graph: ir.Graph, out: ir.Value, columns: int) -> tuple[ir.Node, ir.Value] | None:
    """The Add that only adds a constant [columns] float bias to `out` (its sole use), and that bias."""
    uses = list(out.uses())
    if len(uses) != 1 or out in graph.outputs:
        return None
    add = uses[0].node
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
        return None
    other = _through_identity(graph, add.inputs[1] if add.inputs[0] is out else add.inputs[0])
    c = _constant(graph, other)
    if other is None or other is out or c is None:
        return None
    if c.dtype != ir.DataType.FLOAT or tuple(c.shape) != (columns,):
        return None
    return add, other


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    while name in graph.initializers:
        name += "_"
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value


def _replace(graph: ir.Graph, old: ir.Node, new: ir.Node, out: ir.Value) -> None:
    """`new` computes what `out` (the last value of the replaced nodes) held: uses and name move to it."""
    name, out.name = out.name, None
    graph.insert_before(old, new)
    out.replace_all_uses_with(new.outputs[0], replace_graph_outputs=True)
    new.outputs[0].name = name
    new.outputs[0].shape, new.outputs[0].type = out.shape, out.type


def lift_constants(model: ir.Model) -> int:
    """Constant nodes holding a tensor of 16 elements or more become initializers (TorchScript's exporter leaves
    weights so: without this, quantization finds no constant weight and the "int8" file is the fp32 one);
    returns how many were lifted."""
    from onnx_ir.passes.common import LiftConstantsToInitializersPass

    before = len(model.graph.initializers)
    LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=16)(model)
    return len(model.graph.initializers) - before


def quantize_graph(
    model: ir.Model, exclude: frozenset[str] = frozenset(), record: list[tuple[str, str, str]] | None = None
) -> int:
    """Quantize `model`'s constant-weight matrix products in place (Constant-node weights lifted to
    initializers first); returns how many. Nodes named in `exclude` stay fp32 (a repair keeps them in float);
    `record` gets (node name, activation, output) of every product found, excluded ones too: the output is the
    value the quantized node writes (the bias Add's when it is folded in), named alike in both graphs."""
    lift_constants(model)
    graph = model.graph
    # id(weight value) -> its int8, scale, zero point, and the columns (N of the [K, N] weight)
    made: dict[int, tuple[ir.Value, ir.Value, ir.Value, int]] = {}
    count = 0
    for node in list(graph):
        found = _weight(graph, node)
        if found is None:
            continue
        a, b, tensor, transposed, bias = found
        if record is not None:
            following = _following_bias(graph, node.outputs[0], tensor.shape.numpy()[0 if transposed else 1])
            end = following[0].outputs[0] if bias is None and following is not None else node.outputs[0]
            record.append((node.name or "", a.name or "", end.name or ""))
        if node.name and node.name in exclude:
            continue
        if id(b) not in made:
            w = tensor.numpy()
            q, scale = quantize_columns(np.ascontiguousarray(w.T if transposed else w))
            del w
            if isinstance(tensor, ir.ExternalTensor):
                tensor.release()  # unmapped: its pages leave memory
            made[id(b)] = (
                _initializer(graph, f"{b.name}_int8", q),
                _initializer(graph, f"{b.name}_scale", scale),
                _initializer(graph, f"{b.name}_zero_point", np.zeros(scale.shape, np.int8)),
                int(scale.shape[0]),
            )
        q_value, scale_value, zero_value, columns = made[id(b)]
        out, last = node.outputs[0], node
        if bias is None:
            following = _following_bias(graph, out, columns)
            if following is not None:
                last, bias = following
        inputs = [a, q_value, scale_value, zero_value] + ([bias] if bias is not None else [])
        new = ir.Node(
            MS_DOMAIN,
            "DynamicQuantizeMatMul",
            inputs,
            num_outputs=1,
            name=f"{node.name}_int8" if node.name else f"DynamicQuantizeMatMul_{count}",
        )
        _replace(graph, node, new, last.outputs[0])
        graph.remove([node] + ([last] if last is not node else []), safe=True)
        count += 1
    for name, value in list(graph.initializers.items()):
        if not value.uses() and value not in graph.outputs:
            del graph.initializers[name]
    if count:
        model.opset_imports.setdefault(MS_DOMAIN, 1)
    return count


def save(model: ir.Model, dest: Path, external: bool) -> None:
    """Write the quantized graph, its tensors in `<dest>.data` when `external` (as model.onnx's were)."""
    dest = Path(dest)
    ir.save(model, str(dest), external_data=dest.name + ".data" if external else None)
