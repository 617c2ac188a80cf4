"""Variants that fail are repaired, and say how (issue 28 §1), on models built to fail, exported by the studio
itself from TorchScript checkpoints with a CSV sample, so the whole path runs:

- Outlier: one hidden channel scaled by 1e4 (its weight in the next layer divided by as much, so fp32 is unmoved)
  feeds a matrix product whose activation dynamic int8 quantizes per tensor: every other channel rounds to 0 and
  the argmax flips. The repair must keep that product in float.
- Overflow: a block whose activations reach ~1e5 (x 1e5, then / 1e5): beyond fp16's 65504, inf in fp16. The
  repair must keep the block's nodes in fp32.

Both end with exit 0 from `studio convert --variants int8,fp16` and name the nodes kept in float; with
`--no-repair` they fail (asserted: the models really are broken by the variants)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from studio.cli.commands import main as cli_main
from studio.report.model import ParityInfo, VariantInfo
from studio.variants import _repair as R

FAST = ["--trust-code", "--exporter", "torchscript", "--latency-budget", "0.02", "--no-cuda", "--quiet"]
SIDECAR = {"outputs": ["logits"], "output_kinds": {"logits": "logits"}}


class Outlier(nn.Module):
    """features[8] -> lin1 -> relu -> channel 0 x 1e4 -> lin2 -> relu -> lin3: 4 logits."""

    def __init__(self, scale: float = 1e4):
        super().__init__()
        torch.manual_seed(0)
        self.lin1, self.lin2, self.lin3 = nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 4)
        s = torch.ones(32)
        s[0] = scale
        self.register_buffer("scale", s)
        with torch.no_grad():
            self.lin2.weight[:, 0] /= scale  # fp32: the channel weighs what the others do

    def forward(self, features):
        return self.lin3(torch.relu(self.lin2(torch.relu(self.lin1(features)) * self.scale)))


class Overflow(nn.Module):
    """features[8] -> lin1 -> x 1e5 -> / 1e5 -> tanh -> lin2: 4 logits, activations ~1e5 between."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin1, self.lin2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, features):
        big = self.lin1(features) * 1e5
        return self.lin2(torch.tanh(big / 1e5))


def write_csv(path: Path, rows: int = 16) -> Path:
    x = np.random.default_rng(0).standard_normal((rows, 8))
    lines = [",".join(f"f{i}" for i in range(8))] + [",".join(f"{v:.4f}" for v in r) for r in x]
    path.write_text("\n".join(lines) + "\n")
    return path


def checkpoint(folder: Path, module: nn.Module) -> Path:
    """A TorchScript archive and its studio.json (one tabular input, one logits output)."""
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(module.eval(), (torch.randn(2, 8),)).save(str(folder / "model.pt"))
    (folder / "studio.json").write_text(json.dumps(SIDECAR))
    return folder / "model.pt"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("repair")
    return {
        "sample": write_csv(root / "sample.csv"),
        "outlier": checkpoint(root / "outlier", Outlier()),
        "overflow": checkpoint(root / "overflow", Overflow()),
    }


def _cli(ckpt: Path, sample: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "studio", "convert", str(ckpt), "--data", str(sample), "--out", str(out)]
    return subprocess.run(cmd + FAST + ["--variants", "int8,fp16", *extra], capture_output=True, text=True, timeout=600)


def _variants(out: Path) -> dict[str, dict]:
    return {v["name"]: v for v in json.loads((out / "report.json").read_text())["variants"]}


@pytest.mark.parametrize(
    ("model", "broken", "kept_ops"),
    [("outlier", "int8", {"Gemm"}), ("overflow", "fp16", {"Mul", "Div"})],
)
def test_a_model_built_to_fail_ends_with_a_passing_variant_that_names_its_nodes(
    built, tmp_path, model, broken, kept_ops
):
    # without the repair the variant fails: the model really is broken by it
    plain = tmp_path / "plain"
    cmd = ["convert", str(built[model]), "--data", str(built["sample"]), "--out", str(plain), *FAST]
    assert cli_main(cmd + ["--variants", broken, "--no-repair"]) == 1
    before = _variants(plain)[broken]
    assert before["ok"] is False and before["repair"] == {} and before["kept_float"] == []
    if broken == "int8":
        assert before["parity"]["outputs"][0]["argmax_agreement"] < 0.5  # the argmax flips on most rows
    else:
        assert "fp16 range" in before["error"] and "Mul" in before["error"]

    out = tmp_path / "repaired"
    done = _cli(built[model], built["sample"], out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    variants = _variants(out)
    assert all(v["ok"] for v in variants.values()), {n: v["error"] for n, v in variants.items()}
    fixed = variants[broken]
    repair, kept = fixed["repair"], fixed["kept_float"]
    assert repair["tried"] and repair["passed"] and repair["kept"] == kept and kept
    assert repair["before"].startswith(("parity", "fp16 range")) and repair["after"].startswith("PASS")
    assert 1 <= repair["rounds"] <= R.MAX_ROUNDS and repair["stopped"] == "passed"
    # the price, measured: sizes of both files, ORT CPU p50 of both (the unrepaired one timed beside it)
    assert repair["size_bytes_before"] > 0 and repair["size_bytes"] == fixed["size_bytes"]
    assert repair["p50_ms_before"] > 0 and repair["p50_ms"] > 0 and repair["slowdown"] > 0
    graph = onnx.load(str(out / fixed["file"])).graph
    by_name = {n.name: n for n in graph.node}
    src_ops = {n.name: n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {src_ops[k] for k in kept} >= kept_ops  # named by their nodes in model.onnx
    if broken == "int8":
        assert all(by_name[k].op_type == "Gemm" for k in kept)  # still fp32 Gemm, not DynamicQuantizeMatMul
        assert fixed["quantized"] >= 1 and any(n.op_type == "DynamicQuantizeMatMul" for n in graph.node)
    else:
        assert fixed["cast"] > 0 and all(by_name[k].op_type == src_ops[k] for k in kept)
        fp32_outputs = {o for k in kept for o in by_name[k].output}
        casts = [n for n in graph.node if n.op_type == "Cast" and set(n.input) & fp32_outputs]
        assert casts, "the block's fp32 values are cast back to fp16 after it"
    assert not list((out / "variants").glob(".*")), "the unrepaired file is removed after timing"
    md = (out / "report.md").read_text()
    assert "PASS (repaired)" in md and "Repair: it failed first" in md and "Price: size" in md
    assert ", ".join(kept).replace("_", "\\_") in md or ", ".join(kept) in md


def test_a_repair_that_cannot_pass_keeps_the_best_it_reached(built, tmp_path, monkeypatch):
    """An impossible verdict (every element exact): the repair spends its round budget, reports the best it
    reached and the variant still fails, with its file."""
    from studio import ConvertSpec, convert
    from studio.variants import table as V

    exact = V.Tolerance(0.0, 0.0, 1.0, "exact (test)")
    real = V.tolerance
    monkeypatch.setattr(V, "tolerance", lambda name, a, r: exact if name == "int8" else real(name, a, r))
    monkeypatch.setattr(R, "MAX_ROUNDS", 1)
    report = convert(
        ConvertSpec(
            checkpoint=str(built["outlier"]),
            data=str(built["sample"]),
            out=str(tmp_path / "o"),
            variants=("int8",),
            exporter="torchscript",
            trust_code=True,
            latency_budget_s=0.02,
            cuda=False,
        )
    )
    (v,) = report.variants
    assert not v.ok and report.failed_checks == ["variant:int8"]
    assert v.repair["tried"] and not v.repair["passed"] and v.repair["rounds"] == 1
    assert v.repair["stopped"] == "round budget (1)" and v.repair["after"].startswith("parity")
    # the best reached is the file kept: the outlier's product in float, much closer than before
    assert v.kept_float == v.repair["kept"] == ["Gemm_16"] and v.parity.outputs[0].argmax_agreement == 1.0
    assert {n.op_type for n in onnx.load(str(tmp_path / "o" / v.file)).graph.node} >= {"Gemm", "DynamicQuantizeMatMul"}


def test_rank_scores_the_node_that_adds_the_error_not_those_downstream(tmp_path):
    """x -> A -> B: B's copy in the variant is wrong, A's is right, and C reads B's error: B ranks first, C scores
    about 0 (it reads as much error as it writes)."""

    def graph(path, wb):
        nodes = [
            helper.make_node("MatMul", ["x", "wa"], ["a"], name="A"),
            helper.make_node("MatMul", ["a", "wb"], ["b"], name="B"),
            helper.make_node("Relu", ["b"], ["c"], name="C"),
        ]
        w = np.eye(4, dtype=np.float32)
        inits = [numpy_helper.from_array(w, "wa"), numpy_helper.from_array(wb, "wb")]
        g = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)],
            inits,
        )
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
        return path

    eye = np.eye(4, dtype=np.float32)
    fp32 = graph(tmp_path / "f.onnx", eye)
    bad = graph(tmp_path / "q.onnx", eye * 1.5)
    feeds = {"x": np.abs(np.random.default_rng(0).standard_normal((3, 4))).astype(np.float32)}
    f, q = R.Values(fp32, feeds, 1), R.Values(bad, feeds, 1)
    cands = [R.Candidate(n, (i,), (o,)) for n, i, o in (("A", "x", "a"), ("B", "a", "b"), ("C", "b", "c"))]
    ranked = R.rank(f, q, cands, set())
    assert ranked[0][0] == "B" and ranked[0][1] == pytest.approx(0.5, rel=1e-5)
    assert dict(ranked)["A"] == 0.0 and abs(dict(ranked)["C"]) < 1e-6
    assert {n for n, _ in R.rank(f, q, cands, {"B"})} == {"A", "C"}  # kept nodes are not scored again
    assert R.relative_error(np.ones(3), np.array([1.0, np.inf, 1.0])) == float("inf")
    assert not list(tmp_path.glob(".*values*"))  # the probing copies are removed


def test_fp16_overflow_names_the_block_and_what_must_stay_fp32():
    """A value beyond 65504: the node writing it and those reading it stay fp32 (and the constants they read);
    once kept, the value is no longer held in fp16."""
    nodes = [
        helper.make_node("Constant", [], ["k"], name="K", value=numpy_helper.from_array(np.float32(1e5), "k")),
        helper.make_node("Mul", ["x", "k"], ["big"], name="M"),
        helper.make_node("Div", ["big", "k"], ["small"], name="D"),
        helper.make_node("Relu", ["small"], ["y"], name="R"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    ranges = {"k": 1e5, "big": 2e5, "small": 2.0, "y": 2.0}
    bad = R.fp16_overflow(g, ranges, set())
    assert [b[0] for b in bad] == ["big", "k"] and bad[0][2] == "M"
    keep = R.fp16_keep(g, bad)
    assert set(keep) == {"K", "M", "D"}
    assert R.fp16_overflow(g, ranges, set(keep)) == []


def test_badness_orders_attempts_by_how_far_they_are_from_passing():
    def info(ok, agreement):
        from studio.report.model import OutputDiff

        d = OutputDiff("logits", 0.1, 0.1, ok, agreement, [4, 3])
        return VariantInfo("int8", "f", ok, parity=ParityInfo(ok, 0.1, 0.1, [d], 4, "cpu"))

    assert R.badness(info(True, 1.0)) < R.badness(info(False, 0.75)) < R.badness(info(False, 0.25))
    assert R.verdict(info(True, 1.0)).startswith("PASS")


def test_a_repair_that_does_no_better_leaves_the_variant_as_built(built, tmp_path, monkeypatch):
    """The overflow model's int8 has one quantized product: under an exact verdict, keeping it in float would leave
    nothing quantized (refused), so no round does better and the unrepaired file stays, still failing."""
    from studio import ConvertSpec, convert
    from studio.variants import table as V

    exact = V.Tolerance(0.0, 0.0, 1.0, "exact (test)")
    real = V.tolerance
    monkeypatch.setattr(V, "tolerance", lambda name, a, r: exact if name == "int8" else real(name, a, r))
    report = convert(
        ConvertSpec(
            checkpoint=str(built["overflow"]),
            data=str(built["sample"]),
            out=str(tmp_path / "o"),
            variants=("int8",),
            exporter="torchscript",
            trust_code=True,
            latency_budget_s=0.02,
            cuda=False,
        )
    )
    (v,) = report.variants
    assert not v.ok and v.repair["tried"] and not v.repair["passed"] and v.repair["kept"] == []
    assert v.repair["stopped"].startswith("could not rebuild with 1 node(s) kept: NothingChanged")
    assert v.kept_float == [] and v.quantized == 1 and v.repair["after"] == v.repair["before"]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "o" / v.file)).graph.node}
    assert "DynamicQuantizeMatMul" in ops  # the int8 file as built, put back
    assert not list((tmp_path / "o" / "variants").glob(".*"))


def test_the_loop_gives_up_after_rounds_that_do_no_better():
    """The loop alone (rebuild / recheck / scores stand-ins): a round that does better resets the count; after
    MAX_STALE rounds without a better verdict it stops and keeps the best, rebuilt; never a round past the budget."""
    from studio.report.model import OutputDiff

    def info(agreement):
        d = OutputDiff("logits", 0.5, 0.5, False, agreement, [4, 3])
        return VariantInfo("int8", "f", False, parity=ParityInfo(False, 0.1, 0.1, [d], 4, "cpu"), error="failed x")

    agreements = iter([0.25, 0.5, 0.5, 0.25, 0.5, 0.5, 0.5])  # round 1 worse, round 2 better, then none better
    built: list[list[str]] = []

    def rebuild(kept):
        built.append(list(kept))
        return list(kept)

    def recheck(made):
        return (info(next(agreements)) if len(built) <= 5 else info(0.5)), None

    plan = R.Repair(rebuild, recheck, lambda made, kept: [(f"n{i}", 1.0) for i in range(40) if f"n{i}" not in kept])
    chosen, made, report = R.run(plan, R.Attempt([], info(0.4), None), [])
    assert report["rounds"] == 2 + R.MAX_STALE and report["stopped"] == f"no better in {R.MAX_STALE} rounds"
    assert chosen.kept == ["n0", "n1"] and made == ["n0", "n1"]  # round 2's file (1 + 1 nodes), rebuilt at the end
    assert built[-1] == ["n0", "n1"] and not report["passed"]


def test_two_blocked_nodes_reading_one_value_make_one_cast_not_an_invalid_graph():
    """The fp16 converter writes one identically named Cast per blocked consumer of a value: the repeat is dropped
    (its output is the same name), a repeated node name is renamed, and ONNX Runtime loads the graph."""
    import onnxruntime as ort

    from studio.variants._builders import unique_node_names

    cast = helper.make_node("Cast", ["x"], ["x_cast_to_fp32"], name="x_cast_to_fp32_node", to=TensorProto.FLOAT)
    graph = helper.make_graph(
        [
            cast,
            onnx.NodeProto.FromString(cast.SerializeToString()),  # the converter's repeat
            helper.make_node("Relu", ["x_cast_to_fp32"], ["a"], name="same"),
            helper.make_node("Neg", ["x_cast_to_fp32"], ["b"], name="same"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("a", "b")],
    )
    assert unique_node_names(graph) == 2  # one Cast dropped, one node renamed
    assert [n.name for n in graph.node] == ["x_cast_to_fp32_node", "same", "same_1"]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a, b = sess.run(None, {"x": np.array([-1, 2], dtype=np.float16)})
    assert a.tolist() == [0.0, 2.0] and b.tolist() == [1.0, -2.0]
