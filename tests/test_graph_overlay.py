"""The numbers on the graph (studio.app.graph_overlay) and how Model Explorer is served (studio.app.graph_explorer):
report.json's per-node divergence, ORT's per-node time and a variant's quantized / kept-float nodes become
Model Explorer node data keyed by the ONNX node names; the web app is served only under a live token, offline
(no outside address in what it is given), and its calls answer only from what that token grants."""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper
from starlette.applications import Starlette
from starlette.testclient import TestClient

from studio.app import graph, graph_explorer, graph_overlay, graph_panel


def _graph(path: Path, ops: list[tuple[str, str]], name: str = "main_graph") -> Path:
    """An ONNX file with these (node name, op type) in a row, made with onnx.helper (not the studio)."""
    nodes = [helper.make_node(op, [f"t{i}"], [f"t{i + 1}"], name=n) for i, (n, op) in enumerate(ops)]
    g = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("t0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info(f"t{len(ops)}", TensorProto.FLOAT, ["batch", 4])],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path), save_as_external_data=False)
    return path


def _results(overlay) -> dict:
    doc = json.loads(overlay.doc)
    assert doc["main_graph"] == doc["main_graph (2)"]  # the page's name for the graph id, shown second
    return doc["main_graph"]["results"]


REPORT = {  # report.json's keys as studio.checks.locate / studio.checks.profile write them
    "divergence": {
        "atol": 1e-4,
        "rtol": 1e-3,
        "first": {"node": "/soft/Div", "max_abs_diff": 0.18, "ok": False},
        "per_node": {
            "/lin1/Gemm": {"max_abs_diff": 0.0, "ok": True, "op_type": "Gemm"},
            "/soft/Div": {"max_abs_diff": 0.18, "ok": False, "op_type": "Div"},
            "/lin2/Gemm": {"max_abs_diff": 0.08, "ok": False, "op_type": "Gemm"},
            "/soft/Log": {"max_abs_diff": "nan", "ok": False, "op_type": "Log"},
        },
    },
    "profile": {
        "provider": "CPUExecutionProvider",
        "graph_nodes": {"/lin1/Gemm": 5.0, "/soft/Div": 1.5},
        "variants": {"variants/model.int8.onnx": {"provider": "CPUExecutionProvider", "graph_nodes": {"q": 7.0}}},
    },
}


def test_divergence_is_coloured_per_node_and_a_nan_is_named_not_painted():
    o = graph_overlay.divergence_overlay(REPORT, "main_graph")
    r = _results(o)
    assert r["/lin1/Gemm"] == {"value": 0.0, "bgColor": graph_overlay.AGREES, "textColor": "#ffffff"}
    assert r["/soft/Div"]["bgColor"] == graph_overlay.FIRST and r["/soft/Div"]["value"] == 0.18
    assert r["/lin2/Gemm"]["bgColor"] == graph_overlay.DIFFERS
    assert "/soft/Log" not in r and "/soft/Log" in o.note and "NaN" in o.note  # never a number
    assert o.first == "/soft/Div" and o.nodes == 3
    assert "atol 0.0001, rtol 0.001" in o.legend[0][1]
    # without per_node (an older report): the locator's sites
    sites = {"first": {"node": "a", "max_abs_diff": 1.0, "ok": False}, "agreeing": [{"node": "b", "max_abs_diff": 0}]}
    r = _results(graph_overlay.divergence_overlay({"divergence": sites}, "main_graph"))
    assert r["a"]["bgColor"] == graph_overlay.FIRST and r["b"]["bgColor"] == graph_overlay.DIFFERS  # ok unknown
    assert graph_overlay.divergence_overlay({"divergence": None}, "g") is None


def test_time_is_ort_microseconds_per_node_with_a_gradient():
    o = graph_overlay.time_overlay(REPORT, "main_graph")
    assert _results(o) == {"/lin1/Gemm": {"value": 5.0}, "/soft/Div": {"value": 1.5}}
    assert json.loads(o.doc)["main_graph"]["gradient"] == graph_overlay.TIME_GRADIENT
    assert "slowest (5 µs)" in o.legend[-1][1] and "CPUExecutionProvider" in o.title
    v = graph_overlay.time_overlay(REPORT, "main_graph", "variants/model.int8.onnx")
    assert _results(v) == {"q": {"value": 7.0}} and v.name != o.name
    assert graph_overlay.time_overlay({"profile": {"error": "no profile", "graph_nodes": {}}}, "g") is None


def test_a_variant_says_which_nodes_are_quantized_and_which_were_kept_in_float(tmp_path):
    path = _graph(tmp_path / "v.onnx", [("mm_q", "DynamicQuantizeMatMul"), ("mm_keep", "Relu"), ("act", "Tanh")])
    gid, ops = graph_overlay.node_ops(path)
    assert gid == "main_graph" and ops == {"mm_q": "DynamicQuantizeMatMul", "mm_keep": "Relu", "act": "Tanh"}
    variant = {"name": "int8", "quantized": 1, "kept_float": ["mm_keep", "gone"]}
    o = graph_overlay.precision_overlay(variant, gid, ops)
    r = _results(o)
    assert (r["mm_q"]["value"], r["mm_keep"]["value"], r["act"]["value"]) == (2, 1, 0)
    assert r["mm_q"]["bgColor"] == graph_overlay.QUANTIZED and r["mm_keep"]["bgColor"] == graph_overlay.KEPT
    assert "quantized (1 nodes), 1 = kept in float (1)" in o.title and "gone" in o.note
    assert graph_overlay.precision_overlay({"name": "optimized"}, gid, ops) is None


def test_attach_gives_each_file_its_overlays_and_the_documents_to_grant(tmp_path):
    out = tmp_path / "out"
    _graph(out / "model.onnx", [("/lin1/Gemm", "Gemm"), ("/soft/Div", "Div")])
    _graph(out / "variants" / "model.int8.onnx", [("q", "DynamicQuantizeMatMul")])
    report = {**REPORT, "variants": [{"name": "int8", "file": "variants/model.int8.onnx", "quantized": 1}]}
    found = [
        graph.GraphEntry("model.onnx", "model.onnx", 1, 2),
        graph.GraphEntry("int8 · variants/model.int8.onnx", "variants/model.int8.onnx", 1, 1),
        graph.GraphEntry("fp16 · big.onnx", "big.onnx", 1, 1, too_big="too big"),
    ]
    docs = graph_overlay.attach(found, report, out)
    assert [o.name for o in found[0].overlays] == ["divergence.json", "time.json"]
    assert [o.name for o in found[1].overlays] == ["precision-int8.json", "time-variants-model-int8-onnx.json"]
    assert found[2].overlays == [] and set(docs) == {o.name for e in found[:2] for o in e.overlays}
    # the panel: Model Explorer with the legend, model.onnx's first diverging node selected, and the split
    for e in found:
        e.token = "tok"
    if graph_explorer.explorer_dir() is None:
        pytest.skip("Model Explorer is not installed")
    choices = graph_panel.graph_choices(found)
    assert choices[-1] == "model.onnx ⇆ int8 · variants/model.int8.onnx"
    html = graph_panel.graph_html(found, None, "/soft/Div")
    assert 'data-viewer="model-explorer"' in html and 'id="graph-legend"' in html and "/soft/Div" in html
    data = _data(html)
    assert data["uiState"]["paneStates"][0]["selectedNodeId"] == "/soft/Div"
    assert data["nodeData"] == ["time.json", "divergence.json"]  # the last loaded is painted: divergence
    split = _data(graph_panel.graph_html(found, choices[-1], "/soft/Div"))
    assert [m["url"] for m in split["models"]] == ["model.onnx", "variants/model.int8.onnx"]
    assert [p["selectedGraphId"] for p in split["uiState"]["paneStates"]] == ["main_graph", "main_graph (2)"]
    assert split["sync"] == {"mode": "match_node_id"} and "precision-int8.json" in split["nodeData"]
    targets = dict(zip(split["nodeData"], split["nodeDataTargets"]))  # the page matches a file by its base name
    assert targets["precision-int8.json"] == "model.int8.onnx" and targets["divergence.json"] == "model.onnx"
    assert [p["selectedNodeId"] for p in split["uiState"]["paneStates"]] == ["/soft/Div", ""]  # not in the int8


def _data(html: str) -> dict:
    import html as html_mod
    import urllib.parse

    src = html_mod.unescape(re.search(r'<iframe[^>]* src="([^"]+)"', html).group(1))
    return json.loads(urllib.parse.parse_qs(urllib.parse.urlparse(src).query)["data"][0])


# --- serving ---------------------------------------------------------------------------------------------


class _FakeConvert:
    def __init__(self):
        self.paths: list[Path] = []

    def __call__(self, path: Path, const_limit: int = 16) -> bytes:
        self.paths.append(path)
        return json.dumps({"graphs": [{"id": "main_graph", "nodes": []}]}).encode()


@pytest.fixture()
def served(tmp_path):
    if graph_explorer.explorer_dir() is None:
        pytest.skip("Model Explorer is not installed")
    root = tmp_path / "root"
    out = root / "session-a" / "job" / "out"
    _graph(out / "model.onnx", [("a", "Relu")])
    (out / "report.json").write_text("{}")
    files = graph.GraphFiles(root)
    token = files.grant("a", out, ["model.onnx"], {"divergence.json": '{"g": {"results": {}}}'})
    other = files.grant("b", out, [], {"other.json": "{}"})
    convert = _FakeConvert()
    client = TestClient(Starlette(routes=graph_explorer.routes(files, convert)))
    return client, token, other, convert, out


def test_the_web_app_is_served_offline_under_a_live_token_only(served):
    client, token, _, _, _ = served
    base = f"/{graph_explorer.EXPLORER}/{token}"
    r = client.get(f"{base}/")
    assert r.status_code == 200 and "connect-src 'self'" in r.headers["content-security-policy"]
    page = r.text
    assert f'<base href="{base}/">' in page and 'http-equiv="Content-Security-Policy"' in page
    assert not re.search(r"(?:src|href)=\"?https?:|url\(https?:", page)  # no outside font, script or style
    assert "onload=" not in page and "preconnect" not in page
    scripts = re.findall(r'<script src="([^"]+)"', page) + re.findall(r'<link rel="stylesheet" href="([^"]+)"', page)
    assert scripts
    for name in scripts:
        body = client.get(f"{base}/{name}")
        assert body.status_code == 200, name
        assert '"/api/v1/' not in body.text and "url(/static_files" not in body.text  # relative to the token
    for font in re.findall(r"url\((static_files/[^)]+)\)", page)[:3]:
        assert client.get(f"{base}/{font}").status_code == 200
    assert client.get(f"/{graph_explorer.EXPLORER}/not-a-token/").status_code == 404
    assert client.get(f"/{graph_explorer.EXPLORER}/not-a-token/{scripts[0]}").status_code == 404
    for name in ("../graph.py", "__init__.py", "server.py", "static_files/../index.html", "nothing.js"):
        assert client.get(f"{base}/{name}").status_code == 404, name


def test_its_calls_answer_only_from_what_the_token_grants(served):
    client, token, other, convert, out = served
    base = f"/{graph_explorer.EXPLORER}/{token}"
    assert [e["id"] for e in client.get(f"{base}/api/v1/get_extensions").json()] == ["onnx_adapter"]
    assert client.get(f"{base}/api/v1/read_text_file?path=divergence.json").json() == {
        "content": '{"g": {"results": {}}}'
    }
    for path in ("other.json", "/etc/passwd", str(out / "report.json"), "../report.json", "model.onnx"):
        assert client.get(f"{base}/api/v1/read_text_file", params={"path": path}).status_code == 404, path
    cmd = {"cmdId": "convert", "extensionId": "onnx_adapter", "modelPath": "model.onnx", "settings": {}}
    r = client.post(f"{base}/apipost/v1/send_command", json=cmd)
    assert r.status_code == 200 and r.json()["graphs"][0]["id"] == "main_graph"
    assert convert.paths == [out / "model.onnx"]  # the granted file, resolved by GraphFiles
    for path in (str(out / "model.onnx"), "/etc/passwd", "report.json", "../out/model.onnx"):
        r = client.post(f"{base}/apipost/v1/send_command", json={**cmd, "modelPath": path})
        assert r.status_code == 404, path
    assert client.post(f"/{graph_explorer.EXPLORER}/{other}/apipost/v1/send_command", json=cmd).status_code == 404
    assert client.post(f"{base}/apipost/v1/send_command", json={**cmd, "cmdId": "run"}).status_code == 400
    assert client.post(f"{base}/apipost/v1/send_command", json={**cmd, "extensionId": "x"}).status_code == 400
    assert len(convert.paths) == 1
    assert client.get(f"{base}/apistream/server_director").status_code == 204
    assert client.post(f"{base}/apipost/v1/upload", files={"file": ("x.onnx", b"x")}).status_code in (404, 405)
    assert client.get(f"{base}/api/v1/load_graphs_json?graph_index=0").status_code == 404
    assert client.get(f"{base}/api/v1/check_new_version").json()["version"] == ""
