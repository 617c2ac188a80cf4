"""The Graph panel in a real browser (Playwright + Debian's chromium). After Export of a model built to diverge
(tests/diverging.py: TorchScript drops Softplus's threshold) with the int8 variant: Model Explorer, served by the
studio, draws model.onnx with the nodes coloured by their difference from PyTorch and the first diverging node
selected, its value and colour shown on it; then model.onnx and the int8 variant side by side, synchronised.
Every request of the page, its frames and its worker goes to the studio itself, and no Content-Security-Policy
violation is logged. Netron's viewer (the fallback) loads a model's external data through the granted route.
(Netron replaces window.eval, so its test reads the viewer's frame with locators only, never evaluate.)"""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
from pathlib import Path

import pytest
from test_app_browser import ARGS, CHROMIUM, _browser_or_skip

import studio.app
from studio.app import graph_explorer, graph_overlay

DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"


@pytest.fixture(scope="module")
def served():
    running = studio.app.start(port=0, max_jobs=1, job_timeout_s=300, trust_code=True)
    running.app.warm_up(wait=True)
    yield running
    running.close()


def _rgb(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def test_after_export_the_graph_is_coloured_by_difference_and_split_with_the_variant(served, tmp_path):
    import diverging
    import tiny

    if graph_explorer.explorer_dir() is None:
        pytest.skip("Model Explorer is not installed (pip install ai-edge-model-explorer model-explorer-onnx)")
    sync_playwright = _browser_or_skip()
    from playwright.sync_api import expect

    ckpt = diverging.save(tmp_path / "soft" / "model.pt")
    sample = tiny.write_sample(tmp_path / "sample.csv")
    elsewhere: list[str] = []
    refused: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(90_000)
        local = (served.url, "data:", "blob:")
        page.on("request", lambda r: None if r.url.startswith(local) else elsewhere.append(r.url))
        page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(served.url)
        page.wait_for_selector("#load-demo")
        page.set_input_files("#checkpoint-file input[type=file]", str(ckpt))
        page.set_input_files("#sample-file input[type=file]", str(sample))
        page.wait_for_selector("#mapping-status .mapping-ok")
        page.locator("#exporter input").click()
        page.get_by_role("option", name="legacy (TorchScript)").click()
        page.locator("#variants label", has_text="int8: dynamic").click()
        page.click("#export-btn")
        page.wait_for_selector("#verdict-strip[data-ok='false']", timeout=240_000)  # parity fails: it diverges
        expect(page.locator("#graph-panel")).to_be_visible()
        expect(page.locator("#graph-frame")).to_have_attribute("data-viewer", "model-explorer")
        first = page.inner_text("#graph-divergence code")
        assert first.startswith("/model/soft/"), first
        legend = page.inner_text("#graph-legend")
        assert "max |ONNX Runtime − PyTorch|" in legend and "µs per run" in legend, legend

        # the overlay the view loads, as the studio grants it: the first diverging node's value and colour
        src = page.get_attribute("#graph-frame", "src")
        token = src.split("/")[2]
        doc = page.request.get(
            f"{served.url}{graph_explorer.EXPLORER}/{token}/api/v1/read_text_file?path=divergence.json"
        ).json()
        results = next(iter(json.loads(doc["content"]).values()))["results"]
        assert results[first]["bgColor"] == graph_overlay.FIRST
        assert any(r["bgColor"] == graph_overlay.AGREES for r in results.values())  # nodes before it agree

        frame = page.frame_locator("#graph-frame")
        # selected once drawn: its id in the node's info, and the overlay's value on it in the overlay's colour
        expect(frame.locator("td.value", has_text=first).first).to_be_visible(timeout=120_000)
        shown = frame.locator("td.value .has-bg-color", has_text=repr(results[first]["value"])[:6]).first
        expect(shown).to_be_visible()
        assert shown.evaluate("e => getComputedStyle(e).backgroundColor") == _rgb(graph_overlay.FIRST)
        page.wait_for_timeout(1500)
        shot = tmp_path / "graph-divergence.png"
        page.locator("#graph-panel").screenshot(path=str(shot))
        assert shot.stat().st_size > 20_000

        # model.onnx beside the int8 variant, navigation synchronised by node id
        page.locator("#graph-choice label", has_text="⇆").click()
        expect(page.locator("#graph-frame")).to_have_attribute("data-file", "model.onnx variants/model.int8.onnx")
        # the second pane shows the variant (the page names a repeated graph id "main_graph (2)")
        expect(frame.get_by_text("model.int8.onnx | main_graph (2)").first).to_be_visible(timeout=120_000)
        expect(frame.get_by_text("model.onnx | main_graph", exact=True).first).to_be_visible()
        expect(frame.get_by_text("Sync", exact=True).first).to_be_visible()
        # the same node selected in both panes, the variant's own overlay on it (precision: float as built)
        expect(frame.get_by_text("precision-int8.json").first).to_be_visible()
        assert "quantized" in page.inner_text("#graph-legend")
        page.wait_for_timeout(1500)
        split = tmp_path / "graph-split.png"
        page.locator("#graph-panel").screenshot(path=str(split))
        browser.close()
    assert elsewhere == []  # offline: every request went to the studio itself
    assert refused == []  # and nothing was attempted elsewhere (a blocked request logs a CSP violation)
    if os.environ.get("STUDIO_UPDATE_SCREENSHOT"):
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMG / "graph-divergence.png")
        shutil.copyfile(split, DOCS_IMG / "graph-split.png")


def test_external_data_weights_load_through_the_granted_route(served):
    """model.onnx + model.onnx.data: the graph is drawn from model.onnx; a weight's values, opened in the
    sidebar, come from model.onnx.data through the same per-session route."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from studio.app import graph

    sync_playwright = _browser_or_skip()
    from playwright.sync_api import expect

    app = served.app
    out = app.sessions.session("external-data").folder / "job-x" / "out"
    out.mkdir(parents=True)
    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) + 0.5, "weight")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "weight"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [weight],
    )
    onnx.save(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]),
        str(out / "model.onnx"),
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    assert b"11.5" not in (out / "model.onnx").read_bytes() and (out / "model.onnx.data").stat().st_size == 48
    token = app.graphs.grant("external-data", out, ["model.onnx", "model.onnx.data"])
    fetched: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.on("request", lambda r: fetched.append(urllib.parse.urlparse(r.url).path))
        page.goto(served.url + graph.viewer_url(f"{graph.FILES}/{token}/model.onnx", "mm"))
        page.wait_for_selector("body[data-studio-selected='mm']", timeout=60_000)
        item = page.locator("#sidebar .sidebar-item", has_text="weight").last
        item.locator(".sidebar-item-value-expander").first.click()
        expect(page.locator("#sidebar")).to_contain_text("model.onnx.data")
        expect(page.locator("#sidebar")).to_contain_text("11.5")  # the last weight, read from the .data file
        browser.close()
    assert f"/{graph.FILES}/{token}/model.onnx.data" in fetched
