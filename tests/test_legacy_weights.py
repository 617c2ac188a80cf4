"""studio/export/_legacy_weights.py: the legacy exporter's graph with its weights streamed to external data must be
the plain export's graph, node for node and value for value; the seam is put back however the export ends."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from studio.export._legacy_weights import ALIGN_FROM, INLINE_BYTES, PAGE, weights_apart, writable, write_external


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.big = torch.nn.Linear(64, 4096)  # 1 MiB weight: page-aligned in the data file
        self.small = torch.nn.Linear(4096, 3)
        self.scale = torch.nn.Parameter(torch.tensor([1.5]))  # 4 bytes: stays inside the graph
        self.register_buffer("bias16", torch.arange(3, dtype=torch.float16))

    def forward(self, x):
        return self.small(torch.relu(self.big(x))) * self.scale + self.bias16.float()


def _export(path, lean: bool):
    x = torch.randn(2, 64)
    axes = {"x": {0: "b"}}
    with weights_apart() if lean else _nothing() as taken:
        torch.onnx.export(Net().eval(), (x,), str(path), input_names=["x"], dynamo=False, dynamic_axes=axes)
    if lean:
        assert taken, "the seam took nothing: torch's legacy exporter changed"
        write_external(path, taken)
        assert not taken
    return path


class _nothing:
    def __enter__(self):
        return {}

    def __exit__(self, *exc):
        return False


def _initializers(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_same_graph_same_values_weights_in_the_data_file(tmp_path):
    plain = onnx.load(str(_export(tmp_path / "plain.onnx", lean=False)))
    lean_path = _export(tmp_path / "lean.onnx", lean=True)
    lean = onnx.load(str(lean_path))  # external data loaded back
    assert [n.op_type for n in lean.graph.node] == [n.op_type for n in plain.graph.node]
    assert [i.name for i in lean.graph.input] == ["x"] == [i.name for i in plain.graph.input]
    a, b = _initializers(plain), _initializers(lean)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    onnx.checker.check_model(str(lean_path))
    x = np.random.default_rng(0).standard_normal((5, 64), dtype=np.float32)
    run = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (tmp_path / "plain.onnx", lean_path)
    ]
    np.testing.assert_array_equal(run[0].run(None, {"x": x})[0], run[1].run(None, {"x": x})[0])


def test_layout_small_tensors_inline_large_ones_aligned(tmp_path):
    path = _export(tmp_path / "lean.onnx", lean=True)
    model = onnx.load(str(path), load_external_data=False)
    external = {t.name: {e.key: e.value for e in t.external_data} for t in model.graph.initializer if t.external_data}
    inline = [t for t in model.graph.initializer if not t.external_data]
    assert external and inline
    assert all(len(t.raw_data) < INLINE_BYTES for t in inline)
    assert {e["location"] for e in external.values()} == {"lean.onnx.data"}
    large = [e for e in external.values() if int(e["length"]) >= ALIGN_FROM]
    assert large and all(int(e["offset"]) % PAGE == 0 for e in large)
    end = max(int(e["offset"]) + int(e["length"]) for e in external.values())
    assert (tmp_path / "lean.onnx.data").stat().st_size == end


def test_seam_restored_after_a_failed_export(tmp_path):
    original = torch._C.Graph._export_onnx

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), weights_apart():
        torch.onnx.export(Broken(), (torch.ones(1),), str(tmp_path / "b.onnx"), dynamo=False)
    assert torch._C.Graph._export_onnx is original


def test_only_dtypes_onnx_reads_raw_are_taken():
    assert writable(
        {"w": torch.zeros(2), "i": torch.zeros(2, dtype=torch.int64), "b": torch.zeros(1, dtype=torch.bool)}
    )
    assert not writable({"w": torch.zeros(2), "c": torch.zeros(2, dtype=torch.complex64)})
    assert not writable({})  # nothing to take: the exporter runs as it is


@pytest.mark.parametrize("lean", [False, True])
def test_the_proto_is_rewritten_in_memory_before_it_is_written_and_the_seam_put_back(tmp_path, lean):
    """proto_rewritten: the exporter's serialised model goes through the rewrite before torch writes it (inside
    weights_apart too, where it has no weights), once; the seam is the original again after."""
    from studio.export._legacy_weights import proto_rewritten

    seen = []

    def rewrite(model):
        seen.append(len(model.graph.initializer))
        model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 3  # what export._pin_dims does
        return True

    before = torch._C.Graph._export_onnx
    path = tmp_path / "m.onnx"
    with (
        weights_apart() if lean else __import__("contextlib").nullcontext({}) as taken,
        proto_rewritten(rewrite) as ran,
    ):
        torch.onnx.export(Net().eval(), (torch.randn(2, 64),), str(path), dynamo=False, input_names=["x"])
    if taken:
        write_external(path, taken)
    assert ran == [True] and len(seen) == 1 and (seen[0] <= 1 if lean else seen[0] >= 4)
    assert onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim[1].dim_value == 3
    assert torch._C.Graph._export_onnx is before
