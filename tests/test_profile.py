"""Where the time goes in the model (studio.checks.profile) and the per-node divergence values
(Divergence.per_node): on a tiny real BERT conversion (TorchScript, int8 variant, --locate), on a model built
to diverge (tests/diverging.py), on hand-written profiler events, and on a file ONNX Runtime cannot open.
References: the files' own graphs (onnx), ONNX Runtime's operator registry, PyTorch's module run by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny
import torch
from onnx import numpy_helper

from studio import ConvertSpec, convert
from studio.checks import locate, profile
from studio.cli.text import summary
from studio.report.divergence import Divergence


def _schemas() -> set[str]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return {s.name for s in state.get_all_operator_schema()}


def _graph(path) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in onnx.load(str(path), load_external_data=False).graph.node}


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    root = tmp_path_factory.mktemp("profile")
    folder = tiny.make_hf_folder(root / "bert", "bert")
    sample = tiny.write_sample(root / "sample.csv")
    out, stages = root / "out", []
    spec = ConvertSpec(
        checkpoint=str(folder),
        data=str(sample),
        out=str(out),
        exporter="torchscript",
        variants=("int8",),
        locate=True,
        latency_budget_s=0.05,
        cuda=False,
    )
    report = convert(spec, progress=lambda stage, fraction: stages.append((stage, fraction)))
    return report, out, stages


def test_report_json_holds_the_profile_of_model_onnx_by_node(bert):
    report, out, _ = bert
    p = json.loads((out / "report.json").read_text())["profile"]
    assert p["error"] is None and p["file"] == "model.onnx" and p["provider"] == "CPUExecutionProvider"
    assert p["runs"] >= 1 and p["warmup"] == profile.WARMUP and p["optimization"] == "all"
    assert p["feeds"] == {n: list(a.shape) for n, a in np.load(out / "sample_inputs.npz").items()}
    graph, schemas = _graph(out / "model.onnx"), _schemas()
    # every profiled node stands for a node of model.onnx, or is a fusion ORT named itself (a real ORT op)
    assert all(us >= 0 for us in p["all_nodes"].values())
    exact = sum(us for name, us in p["all_nodes"].items() if name in graph)  # named as in model.onnx
    assert exact >= 0.5 * p["total_us"]
    for n in p["nodes"]:
        assert n["op_type"] in schemas and n["calls"] >= p["runs"] and n["sum_us"] >= n["us"] * 0.5
        if n["name"] in graph:  # the node as written: the same op
            assert n["onnx_node"] == n["name"] and graph[n["name"]].op_type == n["op_type"]
        elif n["onnx_node"] is not None:  # a fused node carrying the name of the node it grew from
            assert n["onnx_node"] in graph and n["onnx_node"] in n["name"]
    assert set(p["graph_nodes"]) <= set(graph) and len(p["graph_nodes"]) >= 0.3 * len(graph)
    mapped = sum(p["graph_nodes"].values())
    # shares over all nodes sum to 1; the node time is the sum of the nodes' times, mostly on model.onnx's nodes
    assert sum(p["all_nodes"].values()) == pytest.approx(p["total_us"], rel=1e-3)
    assert sum(o["share"] for o in p["op_types"]) == pytest.approx(1.0, abs=1e-6)
    assert sum(o["nodes"] for o in p["op_types"]) == len(p["all_nodes"])
    assert mapped == pytest.approx(p["total_us"] * (1 - p["unmapped_share"]), rel=1e-2)
    assert p["unmapped_share"] < 0.5 and 0 < p["total_us"] <= p["run_us"] * 1.01
    # ranked by time; the ops are those of the graph ORT ran
    us = [n["us"] for n in p["nodes"]]
    assert us == sorted(us, reverse=True) and len(p["nodes"]) == min(profile.TOP, len(p["all_nodes"]))
    assert {"MatMul", "LayerNormalization"} <= {o["op_type"] for o in p["op_types"]}
    # the profiler's file was read and deleted: nothing of it in the output folder
    assert not [
        f for f in out.rglob("*") if f.name.startswith(".profile") or (f.suffix == ".json" and "profile" in f.name)
    ]


def test_each_variant_file_has_its_own_profile(bert):
    report, out, _ = bert
    p = report.profile["variants"]["variants/model.int8.onnx"]
    assert p["error"] is None and p["file"] == "model.int8.onnx" and "variants" not in p
    int8 = _graph(out / "variants" / "model.int8.onnx")
    quantized = {n.name for n in int8.values() if n.op_type == "DynamicQuantizeMatMul"}
    assert quantized  # the reference: the variant file itself
    profiled = {n: us for n, us in p["graph_nodes"].items() if int8[n].op_type == "DynamicQuantizeMatMul"}
    assert set(profiled) == quantized and "DynamicQuantizeMatMul" in {o["op_type"] for o in p["op_types"]}


def test_the_stage_comes_after_latency_and_the_report_shows_it(bert):
    report, out, stages = bert
    names = [s for s, _ in stages]
    assert names.index("latency") < names.index("profile") < names.index("writing")
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions)  # the bar never moves back
    assert report.timings["stages"]["profile"] + 0.01 >= report.profile["seconds"] > 0  # measured in its own stage
    md = (out / "report.md").read_text()
    top = report.profile["nodes"][0]
    assert "## Where the time goes in the model" in md and f"| `{top['name']}` | {top['op_type']} |" in md
    assert "Per op type:" in md and "### variants/model.int8.onnx" in md
    text = summary(report)
    line = next(x for x in text.splitlines() if x.startswith("profile  "))
    assert top["name"] in line and f"{top['share']:.1%}" in line and "by op type: " in text


def test_locate_on_a_passing_model_gives_every_compared_node_its_difference(bert):
    report, out, _ = bert
    div = json.loads((out / "report.json").read_text())["divergence"]
    graph = _graph(out / "model.onnx")
    assert div["trigger"] == "requested" and not div["found"] and div["first"] is None
    assert div["per_node"] and set(div["per_node"]) <= set(graph)
    for name, v in div["per_node"].items():
        assert v["ok"] and v["max_abs_diff"] <= 1e-4 and graph[name].op_type == v["op_type"]
        assert v["value"] in graph[name].output
        assert list(graph).index(name) == v["position"]


# --- a model built to diverge (tests/diverging.py: the TorchScript exporter drops Softplus's threshold) ----


@pytest.fixture(scope="module")
def soft(tmp_path_factory):
    import diverging

    root = tmp_path_factory.mktemp("soft")
    ckpt = diverging.save(root / "model.pt")
    sample = tiny.write_sample(root / "sample.csv")
    spec = ConvertSpec(
        checkpoint=str(ckpt),
        data=str(sample),
        out=str(root / "out"),
        exporter="torchscript",
        trust_code=True,
        latency_budget_s=0.05,
        cuda=False,
    )
    return convert(spec), root / "out", ckpt, spec


def test_per_node_values_name_the_first_diverging_node(soft):
    report, out, ckpt, _ = soft
    div = json.loads((out / "report.json").read_text())["divergence"]
    graph = _graph(out / "model.onnx")
    first = div["first"]["node"]
    assert div["found"] and first in graph and first in div["per_node"] and set(div["per_node"]) <= set(graph)
    entry = div["per_node"][first]
    assert not entry["ok"] and entry["module"] == "soft" and graph[first].op_type == entry["op_type"]
    before = [v for v in div["per_node"].values() if v["position"] < entry["position"]]
    assert before and all(v["ok"] for v in before)  # lin1, act agree
    # the independent reference: PyTorch's modules run by hand against ORT's value at that node, on the same rows
    module = torch.load(ckpt, weights_only=False)
    feeds = dict(np.load(out / "sample_inputs.npz"))
    rows = div["rows"]
    with torch.no_grad():
        x = torch.cat([torch.from_numpy(feeds["price"]), torch.from_numpy(feeds["quantity"])], dim=-1)[rows]
        expected = module.soft(module.act(module.lin1(x))).numpy()
    model = onnx.load(str(out / "model.onnx"))
    model.graph.output.append(onnx.ValueInfoProto(name=entry["value"]))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run([entry["value"]], {k: v[rows] for k, v in feeds.items()})[0]
    assert entry["max_abs_diff"] == pytest.approx(float(np.abs(got - expected).max()), rel=1e-5)
    assert entry["max_abs_diff"] > 1e-3


def test_nan_stays_nan_per_node(soft, tmp_path):
    """lin1's bias made NaN in the file: its node's difference is NaN, written "nan" in strict JSON."""
    from studio import sources

    _, out, _, spec = soft
    model = onnx.load(str(out / "model.onnx"))
    bias = next(t for t in model.graph.initializer if t.name.endswith("lin1.bias"))
    array = numpy_helper.to_array(bias).copy()
    array[0] = np.nan
    bias.CopyFrom(numpy_helper.from_array(array, bias.name))
    reader = next(n for n in model.graph.node if bias.name in n.input)
    changed = tmp_path / "nan.onnx"
    onnx.save(model, str(changed))
    loaded = sources.load(spec.checkpoint, spec.validated())
    feeds = {k: torch.from_numpy(v) for k, v in np.load(out / "sample_inputs.npz").items()}
    div = locate.locate(loaded, changed, feeds)
    assert div.first.node == reader.name and math.isnan(div.per_node[reader.name]["max_abs_diff"])
    d = json.loads(json.dumps(div.to_dict(), allow_nan=False))
    assert d["per_node"][reader.name]["max_abs_diff"] == "nan" and d["per_node"][reader.name]["ok"] is False
    back = Divergence.from_dict(d)
    assert math.isnan(back.per_node[reader.name]["max_abs_diff"]) and back.to_dict() == d


# --- the profile's arithmetic on hand-written events; a file it cannot profile -------------------------------


def _run(ts: int, dur: int) -> dict:
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}


def _node(name: str, op: str, ts: int, dur: int) -> dict:
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_summarise_drops_the_warm_up_and_takes_the_median():
    events = [_run(0, 100), _node("a", "MatMul", 1, 90)]  # the warm-up run: dropped
    for i, (a, b) in enumerate([(10, 5), (30, 5), (20, 5), (20, 15)]):  # a's median 20, b's 5
        t = 1000 * (i + 1)
        events += [_run(t, 100), _node("a", "MatMul", t + 1, a), _node("fused b", "FusedGemm", t + 50, b)]
        events.append({"cat": "Node", "name": "a_fence_before", "ts": t + 2, "dur": 999})  # not a kernel's time
    s = profile.summarise(events, {"a", "b"}, warmup=1)
    assert s["runs"] == 4 and s["total_us"] == 25.0 and s["run_us"] == 100.0
    a, b = s["nodes"]
    assert (a["name"], a["us"], a["mean_us"], a["sum_us"], a["calls"]) == ("a", 20.0, 20.0, 80.0, 4)
    assert (b["name"], b["us"], b["onnx_node"], b["share"]) == ("fused b", 5.0, "b", 0.2)
    assert s["graph_nodes"] == {"a": 20.0, "b": 5.0} and s["unmapped_share"] == 0.0
    assert [(o["op_type"], o["share"]) for o in s["op_types"]] == [("MatMul", 0.8), ("FusedGemm", 0.2)]
    assert profile.onnx_node("/x/MatMul/MatMulScaleFusion/", {"/x/MatMul"}) == "/x/MatMul"
    assert profile.onnx_node("BiasGelu_token_1", {"/x/MatMul"}) is None
    with pytest.raises(RuntimeError, match="none after the 1 warm-up"):
        profile.summarise([_run(0, 1)], set(), warmup=1)


def test_a_file_onnx_runtime_cannot_open_gives_a_reason_and_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    work = tmp_path / "work"
    work.mkdir()
    p = profile.profile(bad, {"x": np.zeros((1, 2), np.float32)}, work)
    assert p["file"] == "bad.onnx" and p["error"] and "nodes" not in p and "total_us" not in p
    assert list(work.iterdir()) == []


def test_a_call_longer_than_the_budget_is_the_whole_profile(bert, tmp_path):
    _, out, _ = bert
    feeds = dict(np.load(out / "sample_inputs.npz"))
    slow = profile.profile(out / "model.onnx", feeds, tmp_path, budget_s=0.0)
    assert (slow["warmup"], slow["runs"]) == (0, 1) and slow["error"] is None
    assert all(n["calls"] == 1 for n in slow["nodes"])
    warm = profile.profile(out / "model.onnx", feeds, tmp_path, budget_s=10.0, runs=3)
    assert (warm["warmup"], warm["runs"]) == (1, 3) and set(warm["all_nodes"]) == set(slow["all_nodes"])
    assert list(tmp_path.iterdir()) == []
