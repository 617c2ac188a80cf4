"""--exporter compare: both exporters' files checked and timed side by side, the winner kept as model.onnx;
and the reason `auto` gives for the exporter it kept."""

from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import replace

import numpy as np
import onnx
import pytest
import tiny
import torch
from test_export import DataDependent, Honest, Normed, tabular_model

from studio.checks import parity
from studio.cli import commands as cli
from studio.cli import flags as cli_flags
from studio.errors import ExportError
from studio.export import compare
from studio.export import exporters as export_mod
from studio.report.model import CandidateRow, Timing
from studio.spec import EXPORTERS, CompareDefaults, ExportDefaults
from studio.timing import latency

X = {"x": torch.randn(4, 3).abs()}


# --- the whole conversion, through the CLI -----------------------------------------------------------------


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """`studio convert` of a tiny BERT with --exporter compare: (exit code, stdout, output folder)."""
    root = tmp_path_factory.mktemp("compare")
    folder = tiny.make_hf_folder(root / "bert", "bert")
    sample = tiny.write_sample(root / "sample.csv")
    out = root / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = cli.main(
            [
                "convert",
                str(folder),
                "--data",
                str(sample),
                "--exporter",
                "compare",
                "--out",
                str(out),
                "--latency-budget",
                "0.1",
                "--no-cuda",
                "--quiet",
            ]
        )
    return rc, stdout.getvalue(), out


def test_compare_is_an_exporter_choice():
    assert "compare" in EXPORTERS
    with pytest.raises(SystemExit):
        cli_flags.build_parser().parse_args(["convert", "x", "--exporter", "both"])
    assert cli_flags.build_parser().parse_args(["convert", "x", "--exporter", "compare"]).exporter == "compare"


def test_both_rows_have_real_numbers_and_the_winner_passes_every_check(compared):
    rc, _, out = compared
    report = json.loads((out / "report.json").read_text())
    assert rc == 0 and report["ok"]
    c = report["comparison"]
    rows = {r["exporter"]: r for r in c["rows"]}
    assert set(rows) == {"dynamo", "torchscript"}
    for r in rows.values():
        assert r["exported"] and r["opset"] == 18 and r["error"] is None
        assert r["checker"] and r["parity"] and r["dynamic"] and r["failed_checks"] == []
        assert r["nodes"] == sum(r["op_counts"].values()) > 0 and r["size_bytes"] > 0
        assert r["export_seconds"] > 0 and math.isfinite(r["parity_max_abs_diff"])
        t = r["ort_cpu"]
        assert t["p50_ms"] > 0 and t["iterations"] >= 5 and t["provider"] == "CPUExecutionProvider"
    assert c["winner"] in rows and c["reason"] and report["export"]["exporter"] == c["winner"]
    assert report["export"]["reason"] == "compared: " + c["reason"]
    assert [a["exporter"] for a in report["export"]["attempts"]] == ["dynamo", "torchscript"]
    # the decision follows the rule, from the row's own numbers (the tie rule: test_choose_*)
    p50 = {n: r["ort_cpu"]["p50_ms"] for n, r in rows.items()}
    rounds = {n: r["round_p50_ms"] for n, r in rows.items()}
    assert len(rounds["dynamo"]) == len(rounds["torchscript"]) == compare.ROUNDS
    clearly = {
        a: p50[a] < (1 - compare.MARGIN) * p50[b] and all(x < y for x, y in zip(rounds[a], rounds[b]))
        for a, b in (("dynamo", "torchscript"), ("torchscript", "dynamo"))
    }
    assert c["winner"] == ("torchscript" if clearly["torchscript"] else "dynamo")
    assert ("is faster" in c["reason"]) == clearly[c["winner"]]


def test_model_onnx_is_the_winners_file_and_the_other_is_kept_beside_it(compared):
    _, _, out = compared
    report = json.loads((out / "report.json").read_text())
    winner = report["comparison"]["winner"]
    row = next(r for r in report["comparison"]["rows"] if r["exporter"] == winner)
    other = next(r for r in report["comparison"]["rows"] if r["exporter"] != winner)
    model = onnx.load(str(out / "model.onnx"))
    producer = f"{model.producer_name} {model.producer_version}".strip()
    assert producer == row["producer"] != other["producer"]  # torch 2.13: "pytorch 2.13.0+cpu" vs "pytorch 2.13.0"
    assert next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx")) == row["opset"]
    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    assert ops == row["op_counts"]
    assert {p.key: p.value for p in model.metadata_props}["studio.exporter"] == winner
    # the rest of the pipeline ran on it: the report's own checks are the winner's file's
    assert report["graph"]["op_counts"] == row["op_counts"] and report["latency"]["ort_cpu"]["p50_ms"] > 0
    assert not (out / "compare").exists() and not list(out.glob("**/model.onnx"))[1:]
    # the other exporter's file is kept, named by its row, and is a whole file of its own
    assert row["file"] == "model.onnx" and other["file"] == f"candidates/model.{other['exporter']}.onnx"
    onnx.checker.check_model(str(out / other["file"]), full_check=True)
    kept = onnx.load(str(out / other["file"]))
    assert f"{kept.producer_name} {kept.producer_version}".strip() == other["producer"]
    assert sum(1 for _ in kept.graph.node) == other["nodes"]
    assert sorted((out / "candidates").iterdir()) == [out / other["file"]]  # embedded weights: no .data
    # ORT's per-node profile covers it too (the graph view's time overlay of the split), by its own node names
    timed = report["profile"]["variants"][other["file"]]["graph_nodes"]
    assert timed and set(timed) <= {n.name for n in kept.graph.node}


def test_cli_table_and_report_md(compared):
    _, stdout, out = compared
    report = json.loads((out / "report.json").read_text())
    winner, lines = report["comparison"]["winner"], stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("compare  "))
    assert lines[head] == f"compare  {winner} chosen: {report['comparison']['reason']}"
    assert lines[head + 1].split()[:3] == ["exporter", "export", "opset"]
    loser = next(r for r in report["comparison"]["rows"] if r["exporter"] != winner)
    assert f"kept     {loser['exporter']}: {loser['file']} (the other exporter's file" in stdout
    rows = {line.split()[0]: line.split() for line in lines[head + 2 : head + 4]}
    assert set(rows) == {"dynamo", "torchscript"} and rows[winner][-1] == "chosen"
    for name, cells in rows.items():
        assert cells[1:5] == ["ok", "18", "PASS", "PASS"] and cells[5].startswith("(") and cells[6] == "PASS"
        r = next(r for r in report["comparison"]["rows"] if r["exporter"] == name)
        assert f"{r['ort_cpu']['p50_ms']:.3f}" in cells and str(r["nodes"]) in cells
    md = (out / "report.md").read_text()
    assert "## Exporters compared" in md and f"Chosen: **{winner}**" in md
    assert md.count("| dynamo | ok | 18 |") == 1 and md.count("| torchscript | ok | 18 |") == 1
    loser = next(r["exporter"] for r in report["comparison"]["rows"] if r["exporter"] != winner)
    assert f"{winner}: model.onnx" in md and f"{loser}: candidates/model.{loser}.onnx" in md


def test_both_files_run_and_agree_with_transformers(compared):
    """Both exporters' files give the logits of the checkpoint's own transformers forward on the sample."""
    import onnxruntime as ort
    import transformers

    _, _, out = compared
    report = json.loads((out / "report.json").read_text())
    feeds = dict(np.load(out / "sample_inputs.npz"))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out.parent / "bert").eval()
    with torch.no_grad():
        want = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    for r in report["comparison"]["rows"]:
        s = ort.InferenceSession(str(out / r["file"]), providers=["CPUExecutionProvider"])
        got = s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()})[0]
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=r["file"])


def test_the_app_offers_both_exporters_side_by_side_granted_to_its_session_only(compared):
    """The page's downloads list the other file; the Graph panel offers "model.onnx (winner) ⇆ other", and the
    other file is served only under its session's token (studio.app.graph's grant); a file not granted: 404."""
    import shutil

    from starlette.applications import Starlette
    from starlette.testclient import TestClient
    from test_app_graph import _app, _Req, _token
    from test_app_handlers import make_report

    from studio.app import graph, graph_explorer
    from studio.app import render as app_render
    from studio.report.model import Comparison

    _, _, done = compared
    rep = json.loads((done / "report.json").read_text())
    winner = rep["comparison"]["winner"]
    other = next(r for r in rep["comparison"]["rows"] if r["exporter"] != winner)
    app = _app()
    try:
        out = app.sessions.session("k").folder / "job-x" / "out"
        shutil.copytree(done, out)
        report = make_report()
        report.files = {"model": "model.onnx"}
        report.graph.op_counts = rep["graph"]["op_counts"]
        rows = [CandidateRow(r["exporter"], True, file=r["file"], nodes=r["nodes"]) for r in rep["comparison"]["rows"]]
        report.comparison = Comparison(rows, winner, "test", 0.1)
        assert str(out / other["file"]) in app_render.artifact_paths(report, out, None)
        res = app._report_outputs({"report": report, "zip": None}, out, "k")
        label = f"{other['exporter']} · {other['file']}"
        choices = res[app.ui.graph_choice]["choices"]
        assert choices[:2] == ["model.onnx", label]
        token = _token(res[app.ui.graph_view])
        assert app.graphs.resolve(token, other["file"]) == out / other["file"]
        client = TestClient(Starlette(routes=graph.routes(app.graphs)))
        got = client.get(f"/{graph.FILES}/{token}/{other['file']}")
        assert got.status_code == 200 and got.content == (out / other["file"]).read_bytes()
        (out / "candidates" / "model.other.onnx").write_bytes(b"not granted")
        for name in ("candidates/model.other.onnx", f"../out/{other['file']}", "report.json"):
            assert client.get(f"/{graph.FILES}/{token}/{name}").status_code == 404, name
        assert client.get(f"/{graph.FILES}/not-a-token/{other['file']}").status_code == 404
        if graph_explorer.explorer_dir() is None:
            return
        split = f"model.onnx ({winner}) ⇆ {label}"
        assert choices[2:] == [split]
        view = app.show_graph(split, _Req("k"))[app.ui.graph_view]
        assert 'data-viewer="model-explorer"' in view and f"model.onnx and {other['file']}" in view
        assert "no per-node numbers" in view and "name their nodes differently" in view
        assert "graph-frame" not in app.show_graph(split, _Req("someone else"))[app.ui.graph_view]
    finally:
        app.close()


class Wide(torch.nn.Module):
    """Weights above onnx's 1 KB external-data threshold, so each file gets a `.data` beside it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(3, 128), torch.nn.Linear(128, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_the_other_file_keeps_its_external_data_under_its_own_name(tmp_path, monkeypatch):
    """With external data, the kept candidate's .data is renamed with it and its graph points at the new name:
    it passes the full checker and gives PyTorch's outputs (the module itself) through ONNX Runtime."""
    import onnxruntime as ort

    from studio.checks import graph_info

    monkeypatch.setattr(export_mod, "EXTERNAL_DATA_BYTES", 0)
    module = Wide()
    info, comparison, dest = _compared(module, tmp_path)
    rows = {r.exporter: r for r in comparison.rows}
    loser = next(n for n in rows if n != comparison.winner)
    assert rows[comparison.winner].file == "model.onnx" and rows[loser].file == f"candidates/model.{loser}.onnx"
    kept = tmp_path / rows[loser].file
    assert graph_info.external_files(dest) == [tmp_path / "model.onnx.data"]
    assert graph_info.external_files(kept) == [kept.parent / f"model.{loser}.onnx.data"]
    assert sorted(p.name for p in kept.parent.iterdir()) == [kept.name, kept.name + ".data"]
    onnx.checker.check_model(str(kept), full_check=True)
    with torch.no_grad():
        want = module(X["x"]).numpy()
    for path in (dest, kept):
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": X["x"].numpy()})[0]
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=path.name)
    assert not (tmp_path / "compare").exists()


# --- one exporter fails, both fail -----------------------------------------------------------------------


def _compared(module, tmp_path, **kw):
    loaded = tabular_model(module)
    s = CompareDefaults(exporter="compare", latency_budget_s=0.05, **kw)
    dest = tmp_path / "model.onnx"
    info, comparison = compare.export_compared(loaded, parity.cached_reference(loaded), X, s, dest)
    return info, comparison, dest


def test_dynamo_skipped_below_17_torchscript_wins_with_the_reason(tmp_path, monkeypatch):
    def must_not_run(*a, **k):
        raise AssertionError("the new exporter ran")

    monkeypatch.setitem(export_mod.EXPORT_FUNCTIONS, "dynamo", must_not_run)
    info, c, dest = _compared(Normed(), tmp_path, opset=16)
    dyn, ts = c.rows
    assert dyn.exporter == "dynamo" and dyn.skipped and not dyn.exported and "LayerNorm" in dyn.error
    assert ts.passes and ts.ort_cpu is not None and c.winner == info.exporter == "torchscript"
    assert c.reason.startswith("dynamo skipped: the model has LayerNorm") and "only usable file" in c.reason
    assert export_mod.read_opset(dest) == 16 and not (tmp_path / "compare").exists()


def test_dynamo_fails_on_data_dependent_control_flow_torchscript_wins(tmp_path):
    info, c, dest = _compared(DataDependent(), tmp_path)
    dyn, ts = c.rows
    assert not dyn.exported and not dyn.skipped and dyn.error and dyn.ort_cpu is None
    assert c.winner == "torchscript" and ts.passes and f"dynamo failed: {dyn.error}" in c.reason
    assert info.attempts[0].exporter == "dynamo" and not info.attempts[0].ok
    assert onnx.load(str(dest)).producer_version == ts.producer.split()[-1]


def test_both_fail_is_the_usual_export_error(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("cannot export this")

    for name in ("dynamo", "torchscript"):
        monkeypatch.setitem(export_mod.EXPORT_FUNCTIONS, name, broken)
    with pytest.raises(ExportError) as e:
        _compared(Honest(), tmp_path)
    assert "Every exporter failed" in str(e.value) and "cannot export this" in str(e.value)
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "compare").exists()


def test_pytorch_runs_once_per_input_set_for_both_candidates(tmp_path):
    loaded = tabular_model(Honest())
    calls = []

    def counting(module, named):
        calls.append(tuple(named["x"].shape))
        return loaded.adapter(module, named)

    reference = parity.cached_reference(replace(loaded, adapter=counting))
    s = CompareDefaults(exporter="compare", latency_budget_s=0.05)
    _, c = compare.export_compared(loaded, reference, X, s, tmp_path / "model.onnx")
    assert all(r.exported and r.passes for r in c.rows)
    assert calls and len(calls) == len(set(calls))  # the sample and each probe size: once, not once a file


# --- the choosing rule, on constructed rows -----------------------------------------------------------------


def _row(name, p50, failed=(), exported=True, rounds=None):
    t = Timing(p50, p50, p50, 100, 4, None, 2, "CPUExecutionProvider") if p50 is not None else None
    return CandidateRow(
        name,
        exported,
        None if exported else "boom",
        opset=18,
        failed_checks=list(failed),
        ort_cpu=t,
        checker=True,
        parity="parity" not in failed,
        dynamic=True,
        round_p50_ms=list(rounds) if rounds is not None else ([p50] * 5 if p50 else []),
    )


@pytest.mark.parametrize("order", [1, -1])
def test_choose_tie_within_the_margin_goes_to_dynamo(order):
    rows = [_row("dynamo", 1.05), _row("torchscript", 1.00)][::order]  # torchscript 5% faster: noise
    winner, reason = compare.choose(rows, margin=0.10)
    assert winner == "dynamo" and "within the 10% margin" in reason and "tie goes to the new exporter" in reason
    assert compare.choose([_row("dynamo", 2.0), _row("torchscript", 2.0)][::order])[0] == "dynamo"


@pytest.mark.parametrize("order", [1, -1])
def test_choose_a_clearly_faster_file_wins(order):
    winner, reason = compare.choose([_row("dynamo", 1.00), _row("torchscript", 0.80)][::order], margin=0.10)
    assert winner == "torchscript" and "20% less, faster in 5 of 5 rounds" in reason
    assert compare.choose([_row("dynamo", 0.80), _row("torchscript", 1.00)][::order], margin=0.10)[0] == "dynamo"


def test_choose_faster_overall_but_not_in_every_round_is_a_tie():
    """A drift inside one round can move the overall p50: the file must be faster in every round."""
    rows = [
        _row("dynamo", 1.00, rounds=[1.0, 1.0, 0.7, 1.0, 1.0]),
        _row("torchscript", 0.80, rounds=[0.8, 0.8, 0.9, 0.8, 0.8]),
    ]
    winner, reason = compare.choose(rows, margin=0.10)
    assert winner == "dynamo" and "faster in 4 of 5 rounds" in reason and "not faster in every round" in reason


def test_side_by_side_reports_each_rounds_timings():
    per_round: dict = {}
    out = latency.side_by_side({"a": lambda: None, "b": lambda: sum(range(100))}, 0.05, rounds=5, per_round=per_round)
    assert set(per_round) == {"a", "b"}
    for key, rounds in per_round.items():
        assert len(rounds) == 5 and all(rounds) and sum(map(len, rounds)) == out[key].iterations


def test_choose_passing_every_check_beats_speed():
    winner, reason = compare.choose([_row("dynamo", 0.10, failed=["parity"]), _row("torchscript", 5.0)])
    assert winner == "torchscript" and "only it passes every check" in reason and "dynamo fails parity" in reason
    # neither passes: fewer failed checks first, then the same speed rule
    assert (
        compare.choose([_row("dynamo", 1.0, ["parity", "dynamic"]), _row("torchscript", 1.0, ["parity"])])[0]
        == "torchscript"
    )


def test_choose_missing_timing_or_one_usable_file():
    winner, reason = compare.choose([_row("dynamo", None), _row("torchscript", 0.1)])
    assert winner == "dynamo" and "no ORT CPU latency for dynamo" in reason
    winner, reason = compare.choose([_row("dynamo", None, exported=False), _row("torchscript", 3.0, ["parity"])])
    assert winner == "torchscript" and reason.startswith("dynamo failed: boom")
    with pytest.raises(ValueError):
        compare.choose([_row("dynamo", 1.0, exported=False)])


# --- auto says why ------------------------------------------------------------------------------------------


def _auto(module, tmp_path, **kw):
    return export_mod.export(tabular_model(module), X, ExportDefaults(**kw), tmp_path / "model.onnx")


def test_auto_reason_when_the_new_exporter_succeeds(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "TORCHSCRIPT_FIRST_BYTES", -1)  # auto's order for a large model
    assert _auto(Honest(), tmp_path).reason == "dynamo succeeded first"


def test_auto_reason_on_a_small_model_says_why_torchscript_went_first(tmp_path):
    reason = _auto(Honest(), tmp_path).reason
    assert reason.startswith("torchscript succeeded first (tried first: 0 MB of weights, at most 2048 MB")


def test_auto_reason_when_it_falls_back(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "TORCHSCRIPT_FIRST_BYTES", -1)

    def broken(*a, **k):
        raise RuntimeError("no graph today")

    monkeypatch.setitem(export_mod.EXPORT_FUNCTIONS, "dynamo", broken)
    info = _auto(Honest(), tmp_path)
    assert info.exporter == "torchscript"
    assert info.reason == "dynamo failed: RuntimeError: no graph today; fell back to torchscript"


def test_auto_reason_when_the_new_exporter_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "TORCHSCRIPT_FIRST_BYTES", -1)
    info = _auto(Normed(), tmp_path, opset=16)
    assert info.reason.startswith("dynamo skipped: the model has LayerNorm layers")
    assert info.reason.endswith("; fell back to torchscript")


def test_forced_exporter_reason(tmp_path):
    assert (
        _auto(Honest(), tmp_path, exporter="torchscript").reason == "torchscript was asked for (--exporter torchscript)"
    )
