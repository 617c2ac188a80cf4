"""studio/variants/_int8.py: constant-weight matrix products become DynamicQuantizeMatMul, checked against numpy (an
implementation of the same arithmetic written out here) and ONNX Runtime; everything else is left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from studio.variants import _builders as B
from studio.variants import _int8 as int8

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((16, 8)).astype(np.float32)
BIAS1 = RNG.standard_normal(8).astype(np.float32)
W2 = RNG.standard_normal((4, 8)).astype(np.float32)  # Gemm transB=1: [N, K]
C2 = RNG.standard_normal(4).astype(np.float32)


def _graph(path):
    """x[b,16] -MatMul W1-> +Identity(bias) -> h; h·hᵀ (two activations); Gemm(h, W2, C2, transB) -> y."""
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["m"]),
        helper.make_node("Identity", ["bias1"], ["bias1_shared"]),  # as the legacy exporter routes shared biases
        helper.make_node("Add", ["bias1_shared", "m"], ["h"]),
        helper.make_node("Transpose", ["h"], ["ht"], perm=[1, 0]),
        helper.make_node("MatMul", ["h", "ht"], ["scores"]),
        helper.make_node("Gemm", ["h", "W2", "C2"], ["y"], transB=1),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((W1, "W1"), (BIAS1, "bias1"), (W2, "W2"), (C2, "C2"))]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 16])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("y", "scores")],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def _dynamic_uint8(a):
    """DynamicQuantizeLinear's arithmetic: uint8, the range widened to include 0."""
    lo, hi = min(a.min(), 0.0), max(a.max(), 0.0)
    scale = (hi - lo) / 255 if hi > lo else 1.0
    zero = np.clip(np.rint(-lo / scale), 0, 255)
    return np.clip(np.rint(a / scale) + zero, 0, 255), scale, zero


def _reference(x, w, bias):
    q, s = int8.quantize_columns(w)
    xq, xs, xz = _dynamic_uint8(x)
    return ((xq - xz) @ q.astype(np.float64)) * xs * s + bias


def test_quantize_columns_is_symmetric_per_column():
    w = np.array([[1.0, 0.0, -3.0], [-0.5, 0.0, 1.5]], np.float32)
    q, s = int8.quantize_columns(w)
    assert q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (3,)
    assert np.abs(q).max() == int8.QMAX and s[1] == 1.0 and not q[:, 1].any()  # an all-zero column: scale 1
    assert np.all(np.abs(q * s - w) <= s / 2 + 1e-7)


def test_weights_quantized_biases_folded_activation_products_left_alone(tmp_path):
    src = _graph(tmp_path / "m.onnx")
    model = ir.load(str(src))
    assert int8.quantize_graph(model) == 2
    dest = tmp_path / "m.int8.onnx"
    int8.save(model, dest, external=True)
    saved = onnx.load(str(dest))
    ops = [(n.domain, n.op_type, len(n.input)) for n in saved.graph.node]
    assert ops.count(("com.microsoft", "DynamicQuantizeMatMul", 5)) == 2  # both with their bias
    assert ("", "MatMul", 2) in ops  # h·hᵀ: two activations, fp32
    assert not any(op in ("Add", "Gemm") for _, op, _ in ops)
    assert {i.name for i in saved.graph.initializer}.isdisjoint({"W1", "W2"})  # fp32 weights gone
    assert (tmp_path / "m.int8.onnx.data").is_file() or all(not i.external_data for i in saved.graph.initializer)
    x = RNG.standard_normal((5, 16)).astype(np.float32)
    sess = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    y, scores = sess.run(["y", "scores"], {"x": x})
    h = _reference(x, W1, BIAS1)
    np.testing.assert_allclose(y, _reference(h.astype(np.float32), W2.T, C2), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(scores, h @ h.T, rtol=1e-3, atol=1e-3)
    exact = x @ W1 + BIAS1
    assert np.abs(h - exact).max() < 0.05 * np.abs(exact).max()  # int8 is close to fp32, not equal


def test_a_graph_without_weights_to_quantize_goes_to_onnxruntime(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(RNG.standard_normal((3, 2, 3, 3)).astype(np.float32), "w")],
    )
    src = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(src))
    assert int8.quantize_graph(ir.load(str(src))) == 0
    ctx = B.Context(None, None, src, tmp_path, 1, external=False)
    built = B.build_int8(ctx, src, tmp_path / "conv.int8.onnx")
    assert built.method == "onnxruntime dynamic quantization (int8)"
    assert "ConvInteger" in {n.op_type for n in onnx.load(str(built.path)).graph.node}


def test_weights_held_in_constant_nodes_are_quantized_too(tmp_path):
    """TorchScript's exporter can leave a weight as a Constant node, not an initializer: lifted first, it is
    quantized like any other (before, nothing was, and the "int8" file was the fp32 one)."""
    nodes = [
        helper.make_node("Constant", [], ["W1"], value=numpy_helper.from_array(W1, "W1")),
        helper.make_node("MatMul", ["x", "W1"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    src = tmp_path / "const.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(src))
    ctx = B.Context(None, None, src, tmp_path, 1, external=False)
    built = B.build_int8(ctx, src, tmp_path / "const.int8.onnx")
    ops = [n.op_type for n in onnx.load(str(built.path)).graph.node]
    assert ops == ["DynamicQuantizeMatMul"] and "1 matrix products quantized" in " ".join(built.notes)
    x = RNG.standard_normal((5, 16)).astype(np.float32)
    (y,) = ort.InferenceSession(str(built.path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y, _reference(x, W1, 0.0), rtol=1e-3, atol=1e-3)


def test_an_int8_that_would_quantize_nothing_is_refused(tmp_path):
    """No matrix product or convolution with a constant weight: ONNX Runtime's quantizer changes nothing, and
    the variant is refused (no file), never passed as int8."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(RNG.standard_normal(16).astype(np.float32), "c")],
    )
    src = tmp_path / "add.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(src))
    ctx = B.Context(None, None, src, tmp_path, 1, external=False)
    dest = tmp_path / "add.int8.onnx"
    with pytest.raises(B.NothingChanged, match="no operator was quantized"):
        B.build_int8(ctx, src, dest)
    assert not dest.exists() and not list(tmp_path.glob("add.int8*"))


@pytest.mark.parametrize("op", ["Gemm"])
def test_gemm_with_alpha_is_left_fp32(tmp_path, op):
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "W"], ["y"], alpha=2.0)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(W1, "W")],
    )
    src = tmp_path / "a.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(src))
    assert int8.quantize_graph(ir.load(str(src))) == 0


def test_gelu_fusion_fuses_and_lets_the_graph_go(tmp_path):
    """_fuse_gelu fuses the exporter's erf-GELU, and keeps nothing of the graph once the caller drops it
    (onnxscript's module-level rules kept the last graph matched, and every tensor of the int8 graph with it)."""
    import gc
    import math
    import weakref

    nodes = [
        helper.make_node("Div", ["x", "r2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
        helper.make_node("Mul", ["half", "a"], ["h"]),
        helper.make_node("Mul", ["x", "h"], ["y"]),  # x * (0.5 * (erf(x / sqrt 2) + 1)), as the exporter writes it
    ]
    consts = [
        numpy_helper.from_array(np.array(v, np.float32), n)
        for n, v in (("r2", math.sqrt(2)), ("one", 1.0), ("half", 0.5))
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])
    path = tmp_path / "gelu.onnx"
    graph = helper.make_graph(nodes, "g", [x], [y], consts)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    model = ir.load(str(path))
    assert B._fuse_gelu(model) == 1
    assert [n.op_type for n in model.graph] == ["Gelu"]
    graph = weakref.ref(model.graph)
    del model
    gc.collect()
    assert graph() is None


def test_an_fp16_that_would_convert_nothing_is_refused(tmp_path):
    """A graph with no float tensor: the fp16 conversion changes nothing, and the variant is refused."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["b", 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, None)],
        [numpy_helper.from_array(np.arange(4, dtype=np.int64), "c")],
    )
    src = tmp_path / "ints.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(src))
    ctx = B.Context(None, None, src, tmp_path, 1, external=False)
    with pytest.raises(B.NothingChanged, match="no tensor became fp16"):
        B.build_fp16(ctx, src, tmp_path / "ints.fp16.onnx")
    assert not list(tmp_path.glob("ints.fp16*"))
    built = B.build_fp16(ctx, _graph(tmp_path / "m.onnx"), tmp_path / "m.fp16.onnx")  # float weights: converted
    assert "4 weights fp16" in built.notes[0]
