"""The Graph panel: what the viewer's routes serve (only a session's granted files, only Netron's own static
files, rewritten to run offline), and the panel's fallback for graphs too big to draw."""

from __future__ import annotations

import html
import json
import os
import re
import urllib.parse
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper
from starlette.applications import Starlette
from starlette.testclient import TestClient
from test_app_handlers import make_report, make_variants

from studio.app import graph, graph_explorer


def _chain(path: Path, n: int) -> Path:
    """An ONNX file of n Relu nodes in a row, x[batch, 4] -> y[batch, 4] (a graph made independently of the
    studio: onnx.helper)."""
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"relu_{i}") for i in range(n)]
    g = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("t0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info(f"t{n}", TensorProto.FLOAT, ["batch", 4])],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


@pytest.fixture()
def two_sessions(tmp_path):
    """A sessions root with two sessions' output folders, each holding model.onnx (+ .data for A)."""
    root = tmp_path / "root"
    outs = {}
    for who in ("a", "b"):
        out = root / f"session-{who}" / "job-1" / "out"
        _chain(out / "model.onnx", 3)
        (out / "model.onnx.data").write_bytes(f"weights of {who}".encode())
        (out / "report.json").write_text("{}")
        outs[who] = out
    (tmp_path / "secret.txt").write_text("outside the sessions root")
    files = graph.GraphFiles(root)
    tokens = {w: files.grant(w, o, ["model.onnx", "model.onnx.data"]) for w, o in outs.items()}
    client = TestClient(Starlette(routes=graph.routes(files)))
    return files, tokens, outs, client


def _get(client, token: str, name: str):
    return client.get(f"/{graph.FILES}/{token}/{name}")


def test_a_granted_file_is_served_to_its_token(two_sessions):
    _, tokens, outs, client = two_sessions
    r = _get(client, tokens["a"], "model.onnx")
    assert r.status_code == 200 and r.content == (outs["a"] / "model.onnx").read_bytes()
    assert r.headers["cache-control"] == "private, no-store"
    assert _get(client, tokens["a"], "model.onnx.data").content == b"weights of a"
    r = client.get(f"/{graph.FILES}/{tokens['a']}/model.onnx?download=1")
    assert 'filename="model.onnx"' in r.headers["content-disposition"]


@pytest.mark.parametrize(
    "name",
    [
        "report.json",  # in the folder, but not granted
        "..%2F..%2Fsession-b%2Fjob-1%2Fout%2Fmodel.onnx",  # traversal to another session (encoded slashes)
        "%2E%2E/%2E%2E/session-b/job-1/out/model.onnx",  # ... with encoded dots
        "../../../../secret.txt",
        "%2Fetc%2Fpasswd",
        "%2E/model.onnx",
        "model.onnx/",
        "MODEL.ONNX",
    ],
)
def test_anything_else_is_404(two_sessions, name):
    _, tokens, _, client = two_sessions
    assert _get(client, tokens["a"], name).status_code == 404


def test_another_sessions_file_unknown_token_closed_session_pruned_file_are_404(two_sessions):
    files, tokens, outs, client = two_sessions
    assert _get(client, "not-a-token", "model.onnx").status_code == 404
    # b's token serves b's files only: the same name is b's bytes, never a's
    assert _get(client, tokens["b"], "model.onnx.data").content == b"weights of b"
    files.revoke("a")  # the page was closed
    assert _get(client, tokens["a"], "model.onnx").status_code == 404
    assert _get(client, tokens["b"], "model.onnx").status_code == 200
    (outs["b"] / "model.onnx").unlink()  # pruned with its job folder
    assert _get(client, tokens["b"], "model.onnx").status_code == 404


def test_a_symlink_or_a_folder_outside_the_root_is_404(two_sessions, tmp_path):
    files, tokens, outs, client = two_sessions
    (outs["a"] / "model.onnx.data").unlink()
    os.symlink(outs["b"] / "model.onnx.data", outs["a"] / "model.onnx.data")  # a link to b's weights
    assert _get(client, tokens["a"], "model.onnx.data").status_code == 404
    linked = outs["a"].parent / "linked"
    os.symlink(outs["a"], linked)  # a folder reached through a link
    token = files.grant("a", linked, ["model.onnx"])
    assert _get(client, token, "model.onnx").status_code == 200  # granted by its real path
    outside = tmp_path / "elsewhere"
    _chain(outside / "model.onnx", 2)
    token = files.grant("a", outside, ["model.onnx"])
    assert _get(client, token, "model.onnx").status_code == 404  # not under the sessions root
    (outs["a"] / "sub.onnx").mkdir()
    token = files.grant("a", outs["a"], ["sub.onnx"])
    assert _get(client, token, "sub.onnx").status_code == 404  # not a regular file


def test_the_viewer_is_netrons_own_files_rewritten_to_run_offline(two_sessions):
    client = two_sessions[3]
    r = client.get(f"/{graph.VIEWER}/index.html")
    assert r.status_code == 200
    page = r.text
    assert "connect-src 'self'" in r.headers["content-security-policy"]
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page).group(1)
    assert "connect-src 'self'" in csp and "default-src 'self'" in csp  # the browser fetches nothing elsewhere
    assert '<meta name="version" content="0.0.0">' in page  # not "packaged": no usage reporting
    assert 'name="date"' not in page  # no "please update" after 180 days
    assert page.index(graph.VIEWER_SCRIPT) < page.index('src="index.js"')
    # every script and stylesheet the page names is a local file
    for src in re.findall(r'(?:src|href)="([^"#]+\.(?:js|css))"', page):
        assert not src.startswith(("http:", "https:", "//")), src
        assert client.get(f"/{graph.VIEWER}/{src}").status_code == 200, src
    assert "consent=" in client.get(f"/{graph.VIEWER}/{graph.VIEWER_SCRIPT}").text
    assert client.get(f"/{graph.VIEWER}/onnx.js").status_code == 200
    for name in ("server.py", "__init__.py", "..%2F__init__.py", "nothing.js"):
        assert client.get(f"/{graph.VIEWER}/{name}").status_code == 404, name


# --- the panel ------------------------------------------------------------------------------------------


def _app(**config):
    import studio.app

    return studio.app.create_app(warm_up=False, **config)


def _report_in(out: Path, nodes: int, variant_nodes: int | None = None):
    report = make_report()
    report.files = {"model": "model.onnx"}
    _chain(out / "model.onnx", nodes)
    report.graph.op_counts = {"Relu": nodes}
    if variant_nodes is not None:
        report.variants = make_variants()[:1]
        report.variants[0].file = "variants/model.int8.onnx"
        _chain(out / "variants" / "model.int8.onnx", variant_nodes)
    return report


def test_the_panel_shows_the_viewer_for_model_onnx_and_each_variant(tmp_path):
    app = _app()
    try:
        out = app.sessions.session("k").folder / "job-x" / "out"
        report = _report_in(out, 4, variant_nodes=6)
        res = app._report_outputs({"report": report, "zip": None}, out, "k")
        ui = app.ui
        assert res[ui.graph_col]["visible"] is True
        files = ["model.onnx", "int8 · variants/model.int8.onnx"]
        split = ["model.onnx ⇆ int8 · variants/model.int8.onnx"] if graph_explorer.explorer_dir() else []
        assert [c for c in res[ui.graph_choice]["choices"]] == files + split  # + side by side (Model Explorer)
        view = res[ui.graph_view]
        assert 'id="graph-frame"' in view and "4 nodes" in view and "graph-too-big" not in view
        token = _token(view)
        assert app.graphs.resolve(token, "model.onnx") == out / "model.onnx"
        assert app.graphs.resolve(token, "variants/model.int8.onnx") == out / "variants" / "model.int8.onnx"
        other = app.show_graph("int8 · variants/model.int8.onnx", _Req("k"))[ui.graph_view]
        assert "variants/model.int8.onnx" in other and "6 nodes" in other  # counted from the file itself
        assert "graph-frame" not in app.show_graph("model.onnx", _Req("someone else"))[ui.graph_view]
    finally:
        app.close()


def test_a_graph_above_the_threshold_offers_the_download_instead(tmp_path):
    app = _app(graph_max_nodes=5)
    try:
        out = app.sessions.session("k").folder / "job-x" / "out"
        res = app._report_outputs({"report": _report_in(out, 8, variant_nodes=3)}, out, "k")
        view = res[app.ui.graph_view]
        assert 'id="graph-too-big"' in view and "<iframe" not in view  # the viewer is not loaded
        assert "8 nodes" in view and "at most 5" in view
        href = re.search(r'href="([^"]+)"', view).group(1)
        assert href.endswith("model.onnx?download=1")
        small = app.show_graph("int8 · variants/model.int8.onnx", _Req("k"))[app.ui.graph_view]
        assert "<iframe" in small  # the 3-node variant is drawn
    finally:
        app.close()
    app = _app(graph_max_mb=1e-4)  # ~100 bytes: the file size limit
    try:
        out = app.sessions.session("k").folder / "job-x" / "out"
        view = app._report_outputs({"report": _report_in(out, 2)}, out, "k")[app.ui.graph_view]
        assert (
            'id="graph-too-big"' in view and "(the viewer loads at most 0.1 KB)" in view
        )  # size_text: KB = 2**10 bytes
    finally:
        app.close()


def test_without_netron_the_panel_says_so(monkeypatch):
    app = _app()
    try:
        monkeypatch.setattr(graph, "netron_dir", lambda: None)
        out = app.sessions.session("k").folder / "job-x" / "out"
        view = app._report_outputs({"report": _report_in(out, 2)}, out, "k")[app.ui.graph_view]
        assert "<iframe" not in view and "pip install netron" in view and "download=1" in view
    finally:
        app.close()


def _divergence(node: str | None) -> dict:
    """report.json's `divergence` as studio.checks.locate writes it (Divergence.to_dict())."""
    from studio.report.divergence import Divergence, Site

    first = (
        None
        if node is None
        else Site(
            value=f"{node}_out",
            node=node,
            op_type="Relu",
            module="act",
            module_type="ReLU",
            call=0,
            shape=[2, 3],
            max_abs_diff=0.5,
            max_rel_diff=1.0,
            inputs_max_abs_diff=0.0,
            ok=False,
            position=3,
        )
    )
    return Divergence(found=node is not None, exporter="dynamo", first=first, message="made for the test").to_dict()


def test_the_divergence_node_is_named_and_selected(tmp_path):
    app = _app()
    try:
        out = app.sessions.session("k").folder / "job-x" / "out"
        report = _report_in(out, 3)
        report.divergence = _divergence("relu_1")
        view = app._report_outputs({"report": report}, out, "k")[app.ui.graph_view]
        assert "<code>relu_1</code>" in view and _selected(view) == "relu_1"
        report.divergence = _divergence(None)
        view = app._report_outputs({"report": report}, out, "k")[app.ui.graph_view]
        assert "graph-divergence" not in view and not _selected(view)
    finally:
        app.close()
    app = _app(graph_max_nodes=2)  # too big to draw: the node is still named
    try:
        out = app.sessions.session("k").folder / "job-x" / "out"
        report = _report_in(out, 3)
        report.divergence = _divergence("relu_2")
        view = app._report_outputs({"report": report}, out, "k")[app.ui.graph_view]
        assert "<code>relu_2</code> (in model.onnx)" in view and "graph-too-big" in view
    finally:
        app.close()
    assert graph.divergence_node(make_report()) is None  # a report without the section


def test_external_data_is_said_and_granted(tmp_path):
    app = _app()
    try:
        out = app.sessions.session("k").folder / "job-x" / "out"
        report = _report_in(out, 3)
        (out / "model.onnx.data").write_bytes(b"w")
        view = app._report_outputs({"report": report}, out, "k")[app.ui.graph_view]
        assert "model.onnx.data" in view
        token = _token(view)
        assert app.graphs.resolve(token, "model.onnx.data") == out / "model.onnx.data"
    finally:
        app.close()


def _token(view: str) -> str:
    """The grant's token in the panel's iframe (Netron's file URL or Model Explorer's folder)."""
    src = view.replace("%2F", "/")
    m = re.search(rf"{graph.FILES}/([^/%]+)", src) or re.search(rf"{graph_explorer.EXPLORER}/([^/%]+)/", src)
    return m.group(1)


def _selected(view: str) -> str | None:
    """The node the view selects: Netron's ?select=, or Model Explorer's first pane's selectedNodeId."""
    src = html.unescape(re.search(r'<iframe[^>]* src="([^"]+)"', view).group(1))
    query = urllib.parse.parse_qs(urllib.parse.urlparse(src).query)
    if "data" in query:
        return json.loads(query["data"][0])["uiState"]["paneStates"][0]["selectedNodeId"] or None
    return (query.get("select") or [None])[0]


class _Req:
    def __init__(self, key):
        self.session_hash = key
