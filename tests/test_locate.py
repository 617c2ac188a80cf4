"""The divergence locator on models made to diverge at a known place: an initializer perturbed in the written
file (the node that reads it is found by scanning the graph here, not by the locator), a module whose ONNX
lowering differs from PyTorch (Softplus's threshold, which the TorchScript exporter drops), a module whose
exported form differs on purpose; both exporters; NaN; the budgets; the pipeline hook; the real case
(Longformer, TorchScript, opset 17)."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from studio.checks import locate, runtime
from studio.export import exporters as export_mod
from studio.report import divergence
from studio.report.model import DynamicInfo, ParityInfo, Probe
from studio.sources.base import TABULAR, LoadedModel, ModelInput
from studio.spec import ConvertSpec, ExportDefaults

EXPORTERS = ("torchscript", "dynamo")


class Chain(torch.nn.Module):
    """lin1 -> act -> lin2 -> act (the same module called twice) -> lin3."""

    def __init__(self):
        super().__init__()
        self.lin1, self.lin2, self.lin3 = torch.nn.Linear(3, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)
        self.act = torch.nn.Tanh()

    def forward(self, x):
        return self.lin3(self.act(self.lin2(self.act(self.lin1(x)))))


class Threshold(torch.nn.Module):
    """PyTorch's Softplus returns x where beta * x > threshold; the TorchScript exporter drops the threshold."""

    def __init__(self):
        super().__init__()
        self.lin1, self.act, self.lin2 = torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)
        self.soft = torch.nn.Softplus(beta=2.0, threshold=0.5)

    def forward(self, x):
        return self.lin2(self.soft(self.act(self.lin1(x))))


class Drift(torch.nn.Module):
    """Scales by 2 in eager mode and by 2.5 while torch.export traces it (the new exporter's first step)."""

    def forward(self, x):
        return x * (2.5 if torch.compiler.is_exporting() else 2.0)


class Drifting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin1, self.act, self.drift, self.lin2 = (
            torch.nn.Linear(3, 8),
            torch.nn.Tanh(),
            Drift(),
            torch.nn.Linear(8, 2),
        )

    def forward(self, x):
        return self.lin2(self.drift(self.act(self.lin1(x))))


def loaded_for(module: torch.nn.Module) -> LoadedModel:
    return LoadedModel(
        kind="test",
        path="-",
        module=module.eval(),
        adapter=lambda m, t: (m(t["x"]),),
        inputs=[ModelInput("x", TABULAR, column="x", width=3)],
        output_names=["y"],
        output_kinds={"y": "logits"},
    )


torch.manual_seed(0)
X = {"x": torch.randn(6, 3) * 2}


def export(module_cls, exporter: str, folder):
    torch.manual_seed(0)
    loaded = loaded_for(module_cls())
    path = folder / "model.onnx"
    export_mod.export(loaded, X, ExportDefaults(exporter=exporter), path)
    return loaded, path


@pytest.fixture(scope="module", params=EXPORTERS)
def chain(request, tmp_path_factory):
    loaded, path = export(Chain, request.param, tmp_path_factory.mktemp(f"chain-{request.param}"))
    return request.param, loaded, path


def perturbed(path, tmp_path, initializer: str, change) -> tuple[str, object]:
    """A copy of the file with one initializer changed; returns (the copy, the node that reads it)."""
    model = onnx.load(str(path))
    tensor = next(t for t in model.graph.initializer if t.name == initializer)
    array = numpy_helper.to_array(tensor).copy()
    change(array)
    tensor.CopyFrom(numpy_helper.from_array(array, initializer))
    readers = [n for n in model.graph.node if initializer in n.input]
    assert len(readers) == 1
    out = tmp_path / "perturbed.onnx"
    onnx.save(model, str(out))
    return str(out), readers[0]


def bump(array):
    array[0] += 0.5


def test_the_exported_file_agrees_everywhere(chain):
    exporter, loaded, path = chain
    div = locate.locate(loaded, path, X)
    assert div.exporter == exporter
    assert not div.found and div.first is None and div.complete and div.stopped is None
    assert div.compared == div.candidates >= 5  # lin1, act (2 calls), lin2, lin3
    assert {s.module for s in div.agreeing} <= {"lin1", "act", "lin2", "lin3"}
    assert div.outputs_max_abs_diff is not None and div.outputs_max_abs_diff < 1e-5


def test_a_perturbed_initializer_is_named_with_its_module(chain, tmp_path):
    _, loaded, path = chain
    changed, reader = perturbed(path, tmp_path, "model.lin2.bias", bump)
    div = locate.locate(loaded, changed, X)
    assert div.found and div.first is not None
    assert div.first.node == reader.name and div.first.op_type == reader.op_type
    assert (div.first.module, div.first.module_type) == ("lin2", "Linear")
    assert div.first.max_abs_diff == pytest.approx(0.5, abs=1e-4)  # the bump itself: a bias adds to every row
    assert div.first.inputs_max_abs_diff is not None and div.first.inputs_max_abs_diff < 1e-5
    assert [s.module for s in div.agreeing] == ["lin1", "act"]
    # what follows: the second call of `act`, then lin3 (TorchScript: scope act_1; new exporter: one shared scope)
    assert [(s.module, s.call) for s in div.following] == [("act", 1), ("lin3", 0)]
    assert div.following[0].inputs_max_abs_diff is None or div.following[0].inputs_max_abs_diff > 0.1
    assert div.outputs_max_abs_diff > 1e-3


def test_nan_stays_nan(chain, tmp_path):
    _, loaded, path = chain
    changed, reader = perturbed(path, tmp_path, "model.lin1.bias", lambda a: a.__setitem__(0, np.nan))
    div = locate.locate(loaded, changed, X)
    assert div.first.node == reader.name and div.first.module == "lin1"
    assert math.isnan(div.first.max_abs_diff) and not div.first.ok
    assert div.first.inputs_max_abs_diff == 0.0  # lin1 reads the graph input: the same feeds in both runtimes
    assert math.isnan(div.outputs_max_abs_diff)
    d = json.loads(json.dumps(div.to_dict()))  # strict JSON: no bare NaN
    assert d["first"]["max_abs_diff"] == "nan"
    assert "max abs diff nan" in div.message and "| nan |" in divergence.to_markdown(div)
    back = divergence.Divergence.from_dict(d)  # what the CLI and the page get back from report.json
    assert math.isnan(back.first.max_abs_diff) and back.to_dict() == d
    assert divergence.format_lines(back) == divergence.format_lines(div) and divergence.to_markdown(
        back
    ) == divergence.to_markdown(div)


def test_a_lowering_that_drops_softplus_threshold_is_found_at_that_module(tmp_path):
    # the independent reference: where beta * x > threshold PyTorch returns x, log(1 + exp(beta x)) / beta is larger
    loaded, path = export(Threshold, "torchscript", tmp_path)
    with torch.no_grad():
        inner = torch.tanh(loaded.module.lin1(X["x"]))
    assert bool((2.0 * inner > 0.5).any())
    div = locate.locate(loaded, path, X)
    assert div.found and (div.first.module, div.first.module_type) == ("soft", "Softplus")
    soft_nodes = [n for n in onnx.load(str(path)).graph.node if n.name.startswith("/model/soft/")]
    assert div.first.node == soft_nodes[-1].name  # the node handing the module's value on
    assert div.first.inputs_max_abs_diff < 1e-5
    assert [s.module for s in div.agreeing] == ["lin1", "act"]
    assert [s.module for s in div.following] == ["lin2"]


def test_the_new_exporter_keeps_softplus_threshold(tmp_path):
    loaded, path = export(Threshold, "dynamo", tmp_path)
    div = locate.locate(loaded, path, X)
    assert div.exporter == "dynamo" and not div.found and div.compared >= 3


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_a_module_exported_differently_is_named(exporter, tmp_path):
    loaded, path = export(Drifting, exporter, tmp_path)
    div = locate.locate(loaded, path, X)
    if exporter == "torchscript":  # only torch.export sets is_exporting: the TorchScript file agrees
        assert not div.found
        return
    assert div.found and (div.first.module, div.first.module_type) == ("drift", "Drift")
    assert div.first.op_type == "Mul" and div.first.inputs_max_abs_diff < 1e-5
    with torch.no_grad():  # the independent reference: 2.5 x - 2 x
        expected = float((0.5 * torch.tanh(loaded.module.lin1(X["x"]))).abs().max())
    assert div.first.max_abs_diff == pytest.approx(expected, rel=1e-4)


def test_torchs_own_verification_compares_with_the_exported_program_so_misses_what_tracing_changed(tmp_path):
    """Why the locator compares with the eager module: verify_onnx_program(compare_intermediates=True) (torch
    2.13) compares the ONNX values with torch.export's program, which already holds the traced 2.5."""
    from torch.onnx.verification import verify_onnx_program

    from studio.quiet import quiet
    from studio.sources.wrap import wrap

    torch.manual_seed(0)
    loaded = loaded_for(Drifting())
    with quiet(("", "torch.onnx", "onnxscript")):
        program = torch.onnx.export(wrap(loaded, ["x"]), (X["x"],), dynamo=True)
        infos = verify_onnx_program(program, (X["x"],), compare_intermediates=True)
    assert infos and max(i.max_abs_diff for i in infos) < 1e-5  # "everything agrees"
    program.save(str(tmp_path / "model.onnx"))
    div = locate.locate(loaded, tmp_path / "model.onnx", X)
    assert div.found and div.first.module == "drift" and div.first.max_abs_diff > 0.1


def test_the_budgets_say_how_far_it_got(chain, tmp_path):
    _, loaded, path = chain
    div = locate.locate(loaded, path, X, max_values=1)
    assert not div.complete and "value budget" in div.stopped and div.compared == 1
    assert div.reached < div.nodes and "stopped: value budget" in div.message
    div = locate.locate(loaded, path, X, chunk_values=1, time_budget_s=0.0)
    assert not div.complete and "time budget" in div.stopped and div.compared == 1


def test_external_weights_are_found_and_nothing_is_left_beside_them(chain, tmp_path):
    _, loaded, path = chain
    changed, reader = perturbed(path, tmp_path, "model.lin2.bias", bump)
    onnx.save_model(
        onnx.load(changed), changed, save_as_external_data=True, location="perturbed.onnx.data", size_threshold=0
    )  # every initializer in the .data file, the bumped bias included
    assert (tmp_path / "perturbed.onnx.data").exists()
    before = sorted(p.name for p in tmp_path.iterdir())
    div = locate.locate(loaded, changed, X)
    assert div.first.node == reader.name and div.first.max_abs_diff == pytest.approx(0.5, abs=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # the marked copy beside the weights is gone


def test_one_value_per_run_finds_the_same_as_one_run(chain, tmp_path):
    _, loaded, path = chain
    changed, _ = perturbed(path, tmp_path, "model.lin2.bias", bump)
    whole, split = locate.locate(loaded, changed, X), locate.locate(loaded, changed, X, chunk_values=1)
    assert split.to_dict()["first"] == whole.to_dict()["first"]
    assert [s.to_dict() for s in split.following] == [s.to_dict() for s in whole.following]
    assert [s.value for s in split.agreeing] == [s.value for s in whole.agreeing] and split.complete


def test_rows_are_taken_from_the_feeds(chain, tmp_path):
    _, loaded, path = chain
    changed, _ = perturbed(path, tmp_path, "model.lin2.bias", bump)
    div = locate.locate(loaded, changed, X, rows=[1, 4])
    assert div.rows == [1, 4] and div.first.shape == [2, 8]


def test_lines_and_table_name_the_node(chain, tmp_path):
    _, loaded, path = chain
    changed, reader = perturbed(path, tmp_path, "model.lin2.bias", bump)
    div = locate.locate(loaded, changed, X)
    lines = divergence.format_lines(div)
    assert lines[0].startswith("divergence  FOUND") and reader.name in lines[0]
    assert any(line.strip().startswith("FIRST") and reader.name in line for line in lines)
    table = divergence.to_markdown(div)
    assert f"| FIRST | `{reader.name}` | {reader.op_type} | lin2 (Linear) | [6, 8] |" in table
    assert f"| differs | `{div.following[0].node}` | Tanh | act (Tanh, call 2) | [6, 8] |" in table


def _parity(ok: bool) -> ParityInfo:
    return ParityInfo(ok, 1e-4, 1e-3, [], 6, runtime.CPU)


def test_for_report_runs_on_a_parity_failure_only_on_failing_rows(chain, tmp_path):
    _, loaded, path = chain
    assert locate.for_report(loaded, path, X, parity=_parity(True)) is None
    changed, reader = perturbed(path, tmp_path, "model.lin2.bias", bump)
    div = locate.for_report(loaded, changed, X, parity=_parity(False))
    assert div.trigger == "parity" and div.first.node == reader.name and div.rows == list(range(6))
    asked = locate.for_report(loaded, path, X, parity=_parity(True), requested=True)
    assert asked.trigger == "requested" and not asked.found


def test_failing_rows_are_the_rows_that_differ(chain, tmp_path):
    _, loaded, path = chain
    model = onnx.load(str(path))
    feeds = {"x": X["x"].numpy()}
    outputs = runtime.run(runtime.cpu_session(path), feeds)
    outputs["y"] = outputs["y"].copy()
    outputs["y"][3] += 1.0
    assert locate.failing_rows(loaded, path, X, 1e-4, 1e-3, outputs) == [3]
    assert locate.failing_rows(loaded, path, X, 1e-4, 1e-3) == list(range(6))  # none differs: the first rows
    assert model.graph.output[0].name == "y"


def test_for_report_runs_on_a_differing_probe(chain, tmp_path):
    _, loaded, path = chain
    changed, reader = perturbed(path, tmp_path, "model.lin2.bias", bump)
    dynamic = DynamicInfo(
        False, [Probe(1, None, True, 0.0, "ok", "batch"), Probe(2, None, False, 0.5, "differs", "batch")]
    )
    div = locate.for_report(loaded, changed, X, parity=_parity(True), dynamic=dynamic)
    assert div.trigger == "probe batch 2" and div.first.node == reader.name and div.first.shape == [2, 8]


def test_for_report_records_the_locators_own_failure(tmp_path):
    loaded = loaded_for(Chain())
    missing = tmp_path / "missing.onnx"
    div = locate.for_report(loaded, missing, X, requested=True)
    assert div is not None and not div.found and div.trigger == "requested"
    assert div.message.startswith("the divergence locator failed:")


ROLES = {"review": "text", "order_id": "ignore", "price": "ignore", "quantity": "ignore", "label": "ignore"}


def tiny_longformer(folder, initializer_range: float):
    """tests/tiny_archs.py's tiny Longformer with larger random weights (initializer_range), so that what
    differs inside reaches the logits, as it does with trained weights."""
    import tiny
    import tiny_archs
    import transformers as tf

    torch.manual_seed(0)
    config = tiny_archs.tiny_config("longformer")
    config.initializer_range = initializer_range
    tf.AutoModelForSequenceClassification.from_config(config).eval().save_pretrained(str(folder))
    tiny.bert_tokenizer(folder / "_vocab").save_pretrained(str(folder))
    return folder


@pytest.mark.slow
def test_longformer_by_torchscript_at_opset_17_leaves_pytorch_in_layer_0_self_attention(tmp_path):
    """The real case of issue 15: Longformer exported by TorchScript at opset 17 differs from PyTorch on the
    sample's rows. The locator names layer 0's LongformerSelfAttention, its inputs (the embeddings, the
    query / key / value projections) agreeing, with every ORT graph optimisation off too (the lowering
    itself, not ORT's fusions); checked here with a hook and an ORT run of our own."""
    import tiny

    from studio import sources
    from studio.checks import parity as parity_mod
    from studio.inputs import batch as batch_mod
    from studio.inputs.sample import read_sample

    folder = tiny_longformer(tmp_path / "longformer", 0.5)
    sample = tiny.write_sample(tmp_path / "sample.csv")
    spec = ConvertSpec(
        checkpoint=str(folder), data=str(sample), roles=ROLES, opset=17, exporter="torchscript"
    ).validated()
    loaded = sources.load(spec.checkpoint, spec)
    tensors = batch_mod.build_batch(read_sample(spec.data), loaded, spec.roles, spec, file=str(sample)).tensors
    path = tmp_path / "model.onnx"
    assert export_mod.export(loaded, tensors, spec, path).exporter == "torchscript"
    parity, outputs = parity_mod.parity(loaded, runtime.cpu_session(path), tensors, spec.atol, spec.rtol)
    assert not parity.ok and parity.outputs[0].max_abs_diff > 1e-2
    div = locate.for_report(
        loaded, path, tensors, spec, parity=parity, onnx_outputs=outputs, optimization="disable", agreeing=20
    )
    assert div.trigger == "parity" and div.found and div.exporter == "torchscript"
    first = div.first
    assert (first.module, first.module_type) == ("longformer.encoder.layer.0.attention.self", "LongformerSelfAttention")
    assert first.inputs_max_abs_diff < 1e-5 and first.max_abs_diff > 1e-2
    before = {s.module for s in div.agreeing}
    assert {"longformer.embeddings.LayerNorm"} | {f"{first.module}.{p}" for p in ("query", "key", "value")} <= before
    # independently: the module's own output by a hook, the named value by an ORT run of our own
    rows = {n: t[div.rows] for n, t in tensors.items()}
    seen = []
    handle = loaded.module.get_submodule(first.module).register_forward_hook(
        lambda m, i, o: seen.append(o[0].detach().numpy().copy())
    )
    try:
        with torch.no_grad():
            loaded.adapter(loaded.module, dict(rows))
    finally:
        handle.remove()
    model = onnx.load(str(path))
    model.graph.output.append(onnx.ValueInfoProto(name=first.value))
    onnx.save(model, str(tmp_path / "marked.onnx"))
    got = runtime.run(
        runtime.cpu_session(tmp_path / "marked.onnx", optimization="disable"), {n: t.numpy() for n, t in rows.items()}
    )[first.value]
    assert got.shape == seen[0].shape
    assert float(np.abs(got - seen[0]).max()) == pytest.approx(first.max_abs_diff, rel=1e-5)
