"""Export, inspect, runtime and parity modules on hand-made models: baked dims, opset mismatch,
the exporter's own diagnosis, symbolic dims read back."""
from __future__ import annotations

import pytest
import torch

from studio import export as export_mod
from studio import inspect as inspect_mod
from studio import parity, runtime
from studio.errors import ExportError, OpsetMismatchError
from studio.sources.base import TABULAR, LoadedModel, ModelInput
from studio.spec import ConvertSpec


class Baked(torch.nn.Module):
    """int() of a size is a constant to the tracer: the batch size gets baked into a Reshape."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x).reshape(int(x.shape[0]), 2)


class Honest(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x)


class DataDependent(torch.nn.Module):
    """Python control flow on tensor values: torch.export cannot capture it, tracing can."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.lin(x)
        return -self.lin(x)


def tabular_model(module) -> LoadedModel:
    torch.manual_seed(0)
    return LoadedModel(kind="test", path="-", module=module.eval(), adapter=lambda m, t: (m(t["x"]),),
                       inputs=[ModelInput("x", TABULAR, column="x", width=3)], output_names=["y"],
                       output_kinds={"y": "logits"})


def spec(**kw) -> ConvertSpec:
    return ConvertSpec(checkpoint="-", data="-", **kw).validated()


X = {"x": torch.randn(4, 3).abs()}


def _export(module, tmp_path, **kw):
    loaded = tabular_model(module)
    s = spec(**kw)
    path = tmp_path / "model.onnx"
    info = export_mod.export(loaded, X, s, path)
    return loaded, s, path, info


def test_baked_batch_dimension_is_caught_and_named(tmp_path):
    loaded, s, path, info = _export(Baked(), tmp_path, exporter="torchscript")
    sess = runtime.cpu_session(path)
    p, _ = parity.parity(loaded, sess, X, s.atol, s.rtol)
    assert p.ok  # at the sample's own size everything matches...
    axes = export_mod.dynamic_axes_for(loaded, X, s)
    dyn = parity.probes(loaded, sess, X, axes, s.atol, s.rtol)
    assert dyn.ok is False  # ...but a different batch size does not
    failed = [pr for pr in dyn.probes if not pr.ok]
    assert failed and all(pr.changed == "batch" for pr in failed)
    assert "batch" in failed[0].message and "ONNX Runtime failed" in failed[0].message


def test_static_graph_with_dynamic_request_names_input_and_axis(tmp_path):
    loaded, s, path, info = _export(Honest(), tmp_path, exporter="torchscript", dynamic=())
    sess = runtime.cpu_session(path)
    dyn = parity.probes(loaded, sess, X, {"x": {0: "batch"}}, 1e-4, 1e-3)
    assert dyn.ok is False
    assert any("input 'x' axis 0 (batch) is fixed to 4" in pr.message for pr in dyn.probes)


def test_honest_model_passes_probes_with_symbolic_dims(tmp_path):
    loaded, s, path, info = _export(Honest(), tmp_path, exporter="dynamo")
    g = inspect_mod.graph_info(path)
    assert g.inputs[0].shape == ["batch", 3] and g.outputs[0].shape[0] == "batch"
    assert info.opset == 18 and info.attempts[0].ok
    dyn = parity.probes(loaded, runtime.cpu_session(path), X, export_mod.dynamic_axes_for(loaded, X, s), 1e-4, 1e-3)
    assert dyn.ok and {pr.batch for pr in dyn.probes} == {1, 2}


def _text_model():
    from studio.sources.base import ATTENTION_MASK, INPUT_IDS
    inputs = [ModelInput("input_ids", INPUT_IDS), ModelInput("attention_mask", ATTENTION_MASK)]
    return LoadedModel("test", "test", torch.nn.Identity(), lambda m, named: (), inputs, ["logits"])


@pytest.mark.parametrize("rows, other_batch", [(1, 3), (2, 3), (3, 2), (8, 2)])
def test_probe_plan_uses_small_sizes_that_differ_from_the_traced_ones(rows, other_batch):
    """Probes only have to show that no size was baked in: a batch other than the sample's and the traced
    example's (a 1-row sample is traced with 2 rows), and a longer and a shorter sequence on few rows."""
    t = {"input_ids": torch.ones(rows, 16, dtype=torch.int64), "attention_mask": torch.ones(rows, 16, dtype=torch.int64)}
    axes = {n: {0: "batch", 1: "sequence"} for n in t}
    plan = parity.probe_plan(_text_model(), t, axes)
    batches = [(b, s) for axis, b, s in plan if axis == "batch"]
    assert batches == ([(1, 16)] if rows != 1 else []) + [(other_batch, 16)]
    assert [(b, s) for axis, b, s in plan if axis == "sequence"] == [(min(rows, 2), 21), (1, 14)]


def test_opset_mismatch_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "read_opset", lambda path: 19)
    with pytest.raises(OpsetMismatchError) as e:
        _export(Honest(), tmp_path, exporter="torchscript", opset=17)
    assert "Requested opset 17" in str(e.value) and "wrote opset 19" in str(e.value)
    assert not (tmp_path / "model.onnx").exists()  # nothing half written


def test_new_exporter_writes_18_when_14_is_asked(tmp_path):
    """The fact DESIGN.md records for torch 2.13; if a newer torch fixes it, the export passes."""
    try:
        _, _, _, info = _export(Honest(), tmp_path, exporter="dynamo", opset=14)
    except OpsetMismatchError as e:
        assert e.requested == 14 and e.written != 14
    else:
        assert info.opset == 14


def test_exporter_failure_carries_its_own_diagnosis(tmp_path):
    with pytest.raises(ExportError) as e:
        _export(DataDependent(), tmp_path, exporter="dynamo")
    assert "dynamo exporter failed" in str(e.value)
    assert e.value.details  # torch.onnx's report=True markdown (or the full error text)


def test_auto_falls_back_and_records_both_attempts(tmp_path):
    _, _, path, info = _export(DataDependent(), tmp_path, exporter="auto")
    assert [a.exporter for a in info.attempts] == ["dynamo", "torchscript"]
    assert not info.attempts[0].ok and info.attempts[0].error
    assert info.attempts[1].ok and info.exporter == "torchscript" and path.exists()


def test_checker_reports_a_broken_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert inspect_mod.check(bad).ok is False


def test_cuda_is_never_claimed_without_a_cuda_session(tmp_path):
    _, _, path, _ = _export(Honest(), tmp_path, exporter="torchscript")
    cs = runtime.cuda_session(path)
    if cs.session is None:
        assert cs.reason
    else:
        assert cs.session.get_providers()[0] == runtime.CUDA


def test_compare_rules():
    import numpy as np
    e = {"y": np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)}
    a = {"y": e["y"] + 1e-6}
    d = parity.compare(e, a, 1e-4, 1e-3, {"y": "logits"})[0]
    assert d.ok and d.argmax_agreement == 1.0 and d.max_abs_diff < 2e-6
    d = parity.compare(e, {"y": e["y"][:, ::-1].copy()}, 1e-4, 1e-3, {"y": "logits"})[0]
    assert not d.ok and d.argmax_agreement == 0.0
    d = parity.compare(e, {"y": e["y"][:1]}, 1e-4, 1e-3, {})[0]
    assert not d.ok and d.max_abs_diff == float("inf")  # a shape mismatch is a failure, not a crash
