"""Export, inspect, runtime and parity modules on hand-made models: baked dims, opset mismatch,
the exporter's own diagnosis, symbolic dims read back."""

from __future__ import annotations

import onnx
import pytest
import torch

from studio.checks import graph_info, parity, runtime
from studio.errors import ExportError, OpsetMismatchError
from studio.export import _split17 as split17
from studio.export import exporters as export_mod
from studio.sources.base import TABULAR, LoadedModel, ModelInput
from studio.spec import ExportDefaults, default


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
    return LoadedModel(
        kind="test",
        path="-",
        module=module.eval(),
        adapter=lambda m, t: (m(t["x"]),),
        inputs=[ModelInput("x", TABULAR, column="x", width=3)],
        output_names=["y"],
        output_kinds={"y": "logits"},
    )


ATOL, RTOL = default("atol"), default("rtol")


X = {"x": torch.randn(4, 3).abs()}


@pytest.fixture
def dynamo_first(monkeypatch):
    """auto's order for a large model (new exporter first): these tiny ones would go to TorchScript first."""
    monkeypatch.setattr(export_mod, "TORCHSCRIPT_FIRST_BYTES", -1)


def _export(module, tmp_path, **kw):
    loaded = tabular_model(module)
    s = ExportDefaults(**kw)
    path = tmp_path / "model.onnx"
    info = export_mod.export(loaded, X, s, path)
    return loaded, s, path, info


def test_baked_batch_dimension_is_caught_and_named(tmp_path):
    loaded, s, path, info = _export(Baked(), tmp_path, exporter="torchscript")
    sess = runtime.cpu_session(path)
    assert info.traced == [2, None]  # 2 of the sample's 4 rows (studio/export/_example.py)
    p, outputs = parity.parity(loaded, sess, X, ATOL, RTOL)
    assert p.ok is False and outputs == {} and p.outputs == []  # the real rows already fail, and say why...
    assert p.error.startswith("ONNX Runtime failed on the sample's 4 rows: ")
    axes = export_mod.dynamic_axes_for(loaded, X, s)
    dyn = parity.probes(loaded, sess, X, axes, ATOL, RTOL, traced=info.traced)
    assert dyn.ok is False  # ...and so does a batch one away from the traced one
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
    g = graph_info.graph_info(path)
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
    t = {
        "input_ids": torch.ones(rows, 16, dtype=torch.int64),
        "attention_mask": torch.ones(rows, 16, dtype=torch.int64),
    }
    axes = {n: {0: "batch", 1: "sequence"} for n in t}
    plan = parity.probe_plan(_text_model(), t, axes)
    batches = [(b, s) for axis, b, s in plan if axis == "batch"]
    assert batches == ([(1, 16)] if rows != 1 else []) + [(other_batch, 16)]
    assert [(b, s) for axis, b, s in plan if axis == "sequence"] == [(min(rows, 2), 21), (1, 14)]


def test_opset_mismatch_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "read_opset", lambda path, model=None: 19)
    with pytest.raises(OpsetMismatchError) as e:
        _export(Honest(), tmp_path, exporter="torchscript", opset=17)
    assert "Requested opset 17" in str(e.value) and "wrote opset 19" in str(e.value)
    assert not (tmp_path / "model.onnx").exists()  # nothing half written


def test_new_exporter_writes_18_when_14_is_asked(tmp_path):
    """With torch 2.13 the new exporter writes a newer opset than the 14 asked for: refused as a mismatch
    naming both; if a newer torch fixes it, the export passes."""
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


@pytest.mark.usefixtures("dynamo_first")
def test_auto_falls_back_and_records_both_attempts(tmp_path):
    _, _, path, info = _export(DataDependent(), tmp_path, exporter="auto")
    assert [a.exporter for a in info.attempts] == ["dynamo", "torchscript"]
    assert not info.attempts[0].ok and info.attempts[0].error
    assert info.attempts[1].ok and info.exporter == "torchscript" and path.exists()


def test_checker_reports_a_broken_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert graph_info.check(bad).ok is False


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


# --- files an exporter writes that later stages could not open -------------------------------------


def _split18_in_opset17(total: int, parts: int, output_shapes: bool) -> onnx.ModelProto:
    """What torch 2.13's new exporter leaves at opset 17: an opset-18 Split (num_outputs) in an opset-17 file."""
    from onnx import TensorProto, helper

    outs = [f"y{i}" for i in range(parts)]
    node = helper.make_node("Split", ["x"], outs, axis=1, num_outputs=parts, name="split_qkv")
    chunk = -(-total // parts)
    sizes = [chunk] * (parts - 1) + [total - chunk * (parts - 1)]
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", total])],
        [
            helper.make_tensor_value_info(o, TensorProto.FLOAT, ["batch", s if output_shapes else f"w{i}"])
            for i, (o, s) in enumerate(zip(outs, sizes))
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("total, parts, output_shapes", [(96, 3, True), (7, 3, False), (7, 3, True)])
def test_opset18_split_is_rewritten_for_opset17(tmp_path, total, parts, output_shapes):
    """The rewritten file passes the checker, loads in ONNX Runtime and splits as opset 18 defines
    (chunks of ceil(total / parts), the last one smaller), checked against slices written out here."""
    import numpy as np
    import onnx

    path = tmp_path / "m.onnx"
    onnx.save(_split18_in_opset17(total, parts, output_shapes), str(path))
    assert not graph_info.check(path).ok  # the file as the exporter leaves it
    assert split17.split_to_opset17(path) == (1, [])
    assert graph_info.check(path).ok and runtime.check_session(path)[1] is None
    x = np.arange(2 * total, dtype=np.float32).reshape(2, total)
    got = runtime.run(runtime.cpu_session(path), {"x": x})
    chunk = -(-total // parts)
    for i in range(parts):
        np.testing.assert_array_equal(got[f"y{i}"], x[:, i * chunk : min(total, (i + 1) * chunk)])


def test_split_with_unknown_sizes_is_left_and_named(tmp_path):
    import onnx

    model = _split18_in_opset17(6, 2, output_shapes=False)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "width"  # the split axis is not static
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert split17.split_to_opset17(path) == (0, ["split_qkv"])
    assert "checker" in export_mod.file_problem(path)


def _writes(model_fn):
    """A fake exporter that writes `model_fn(opset)` where the real one would write its file."""

    def fake(model, args, names, output_names, axes, opset, path, external, diag_dir):
        import onnx

        onnx.save(model_fn(opset), str(path))

    return fake


def _unknown_op(domain: str):
    def build(opset):
        from onnx import TensorProto, helper

        node = helper.make_node("NoSuchOp", ["x"], ["y"], domain=domain)
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        )
        imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
        return helper.make_model(graph, opset_imports=imports, ir_version=8)

    return build


@pytest.mark.usefixtures("dynamo_first")
@pytest.mark.parametrize("domain, why", [("", "onnx checker"), ("com.acme", "ONNX Runtime cannot load")])
def test_auto_treats_an_unusable_file_as_a_failed_attempt(tmp_path, monkeypatch, domain, why):
    """A file the checker rejects, or one it passes but ONNX Runtime cannot load, is a failed attempt with
    its reason; auto goes on to the next exporter."""
    monkeypatch.setitem(export_mod.EXPORT_FUNCTIONS, "dynamo", _writes(_unknown_op(domain)))
    _, _, path, info = _export(Honest(), tmp_path, exporter="auto")
    first, second = info.attempts
    assert not first.ok and why in first.error and first.opset_written == 18
    assert second.ok and info.exporter == "torchscript" and runtime.check_session(path)[1] is None


def test_forced_exporter_with_an_unusable_file_is_an_export_error(tmp_path, monkeypatch):
    """With one exporter there is nothing to fall back to: ExportError (CLI exit 2), no file left behind."""
    monkeypatch.setitem(export_mod.EXPORT_FUNCTIONS, "dynamo", _writes(_unknown_op("com.acme")))
    with pytest.raises(ExportError) as e:
        _export(Honest(), tmp_path, exporter="dynamo")
    assert "unusable file" in str(e.value) and "ONNX Runtime cannot load" in str(e.value)
    assert not (tmp_path / "model.onnx").exists()


class Normed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.norm = torch.nn.Linear(3, 2), torch.nn.LayerNorm(2)

    def forward(self, x):
        return self.norm(self.lin(x))


@pytest.mark.usefixtures("dynamo_first")
def test_auto_skips_the_new_exporter_below_17_for_layer_norm(tmp_path, monkeypatch):
    """Known to fail (it writes 18 after a full export): skipped up front, the reason recorded, no time spent."""

    def must_not_run(*a, **k):
        raise AssertionError("the new exporter ran")

    monkeypatch.setitem(export_mod.EXPORT_FUNCTIONS, "dynamo", must_not_run)
    _, _, path, info = _export(Normed(), tmp_path, exporter="auto", opset=16)
    first, second = info.attempts
    assert first.skipped and not first.ok and first.seconds == 0.0 and "LayerNorm" in first.error
    assert second.ok and info.exporter == "torchscript" and info.opset == 16


def test_the_skip_is_true_the_forced_new_exporter_writes_18(tmp_path):
    """The fact the skip rests on (torch 2.13); if a newer torch writes 16, the skip must go."""
    with pytest.raises(OpsetMismatchError) as e:
        _export(Normed(), tmp_path, exporter="dynamo", opset=16)
    assert e.value.written == 18


@pytest.mark.usefixtures("dynamo_first")
def test_auto_still_tries_the_new_exporter_below_17_without_layer_norm(tmp_path):
    _, _, _, info = _export(Honest(), tmp_path, exporter="auto", opset=16)
    assert not info.attempts[0].skipped and info.attempts[0].exporter == "dynamo"


def test_graph_info_tensors_walks_subgraphs_and_functions():
    """Every tensor that may hold external data: initializers, Constant values, an If branch's own
    initializer and Constant, a function's Constant (the reference is the list written by hand below)."""
    h, T = onnx.helper, onnx.TensorProto

    def const(name):
        return h.make_node("Constant", [], [name], value=h.make_tensor(f"{name}_value", T.FLOAT, [1], [1.0]))

    branch = h.make_graph(
        [const("b_c"), h.make_node("Add", ["b_c", "b_init"], ["b_out"])],
        "branch",
        [],
        [h.make_tensor_value_info("b_out", T.FLOAT, [1])],
        initializer=[h.make_tensor("b_init", T.FLOAT, [1], [2.0])],
    )
    fn = h.make_function("local", "f", [], ["f_out"], [const("f_out")], [h.make_opsetid("", 17)])
    graph = h.make_graph(
        [
            const("c"),
            h.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch),
            h.make_node("f", [], ["z"], domain="local"),
        ],
        "g",
        [h.make_tensor_value_info("cond", T.BOOL, [])],
        [h.make_tensor_value_info("y", T.FLOAT, [1])],
        initializer=[h.make_tensor("w", T.FLOAT, [1], [3.0])],
    )
    model = h.make_model(graph, functions=[fn], opset_imports=[h.make_opsetid("", 17), h.make_opsetid("local", 1)])
    names = sorted(t.name for t in graph_info.tensors(model))
    assert names == sorted(["w", "c_value", "b_c_value", "b_init", "b_c_value", "b_init", "f_out_value"])


@pytest.mark.usefixtures("dynamo_first")
@pytest.mark.parametrize("module, exporter, runs", [(Honest(), "dynamo", 0), (DataDependent(), "auto", 1)])
def test_work_beside_the_export_runs_once_in_a_thread_during_a_torchscript_attempt_only(
    tmp_path, module, exporter, runs
):
    """`beside`: runs in another thread while the TorchScript exporter runs (and is joined before export
    returns), never beside the new exporter; an exception in it does not touch the export."""
    import threading

    seen = []

    def work(prep):
        seen.append((threading.current_thread() is not threading.main_thread(), tuple(prep.names)))
        raise RuntimeError("dropped: redone where its results are used")

    loaded = tabular_model(module)
    info = export_mod.export(loaded, X, ExportDefaults(exporter=exporter), tmp_path / "model.onnx", beside=work)
    assert info.attempts[-1].ok
    assert seen == [(True, ("x",))] * runs
    assert not [t for t in threading.enumerate() if t.name == "studio-beside-export"]  # joined


def test_references_computed_ahead_are_the_ones_parity_and_the_probes_use():
    """parity.references fills cached_reference for the sample and every probe size: the checks then run
    PyTorch zero more times; a size PyTorch fails at is left for the probe to report."""
    calls = []

    class Counting(Honest):
        def forward(self, x):
            calls.append(tuple(x.shape))
            if x.shape[0] == 3:
                raise ValueError("no three-row batches")
            return self.lin(x)

    loaded = parity.cached_reference(tabular_model(Counting()))
    axes = {"x": {0: "batch"}}
    parity.references(loaded, X, axes, [2, None])
    ahead = list(calls)
    assert (4, 3) in ahead and (1, 3) in ahead and (3, 3) in ahead
    for _, _, inputs in [(None, None, X)] + parity.probe_inputs(loaded, X, axes, [2, None]):
        try:
            parity.torch_outputs(loaded, inputs)
        except ValueError:
            pass
    assert calls[len(ahead) :] == [(3, 3)]  # only the failing size runs again (and fails again, to be reported)


def test_annotate_appends_new_keys_without_rewriting_the_graph_and_replaces_known_ones(tmp_path):
    """artifacts.annotate: new keys go in as an appended ModelProto (protobuf merges concatenated messages), so
    the file's bytes before them are untouched; onnx, its checker and ONNX Runtime all read them; a key already
    there is replaced, not repeated."""
    from studio import artifacts

    _, _, path, _ = _export(Honest(), tmp_path, exporter="torchscript")
    before = path.read_bytes()
    artifacts.annotate(path, {"studio.a": "1", "studio.b": '{"x": [1, 2]}'})
    after = path.read_bytes()
    assert after.startswith(before) and len(after) > len(before)
    onnx.checker.check_model(str(path))
    meta = runtime.cpu_session(path).get_modelmeta().custom_metadata_map
    assert meta["studio.a"] == "1" and meta["studio.b"] == '{"x": [1, 2]}'
    artifacts.annotate(path, {"studio.a": "2"})
    props = [(p.key, p.value) for p in onnx.load(str(path)).metadata_props]
    assert props.count(("studio.a", "2")) == 1 and not [k for k, v in props if k == "studio.a" and v != "2"]
    assert runtime.run(runtime.cpu_session(path), {"x": X["x"].numpy()})["y"].shape == (4, 2)  # still runs
