"""The Graph panel in a real browser (Playwright + Debian's chromium): after Export, Netron's viewer, served by
the studio, draws the demo's graph with its inputs and symbolic dims, a click on a node shows its properties,
a variant can be chosen, the node named in the URL is selected, and nothing is fetched from anywhere else.
(Netron replaces window.eval, so the test reads the viewer's frame with locators only, never evaluate.)"""

from __future__ import annotations

import os
import shutil
import urllib.parse
from pathlib import Path

import pytest
from test_app_browser import ARGS, CHROMIUM, _browser_or_skip

import studio.app


@pytest.fixture(scope="module")
def served():
    running = studio.app.start(port=0, max_jobs=1, job_timeout_s=300)
    running.app.warm_up(wait=True)
    yield running
    running.close()


def test_the_graph_of_the_demo_renders_and_a_node_can_be_selected(served, tmp_path):
    sync_playwright = _browser_or_skip()
    from playwright.sync_api import expect

    elsewhere: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        local = (served.url, "data:", "blob:")
        page.on("request", lambda r: None if r.url.startswith(local) else elsewhere.append(r.url))
        page.goto(served.url)
        page.click("#load-demo")
        page.wait_for_selector("#mapping-status .mapping-ok")
        page.locator("#variants label", has_text="int8").click()
        page.click("#export-btn")
        page.wait_for_selector("#verdict-strip[data-ok='true']", timeout=240_000)
        expect(page.locator("#graph-panel")).to_be_visible()

        frame = page.frame_locator("#graph-frame")
        # the real graph: the demo's inputs with their symbolic dims, and its nodes
        inputs = frame.locator("#canvas .graph-input")
        expect(inputs.first).to_be_attached(timeout=90_000)
        names = [inputs.nth(i).text_content() for i in range(inputs.count())]
        assert any(n.startswith("input_ids") for n in names), names
        assert any("batch" in n and "sequence" in n for n in names), names  # int64[batch,sequence]
        nodes = frame.locator("#canvas .graph-node")
        assert nodes.count() > 50

        # a click on a node shows its properties in Netron's sidebar
        node = nodes.nth(3)
        node_id = node.get_attribute("id")  # "node-name-<its ONNX name>"
        assert node_id.startswith("node-name-")
        node.locator(".node-item").first.click()
        sidebar = frame.locator("#sidebar")
        expect(sidebar).to_contain_text("Node Properties", ignore_case=True)
        expect(sidebar).to_contain_text(node_id[len("node-name-") :])
        page.wait_for_timeout(300)
        shot = tmp_path / "graph.png"
        page.locator("#graph-panel").screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000

        # the node named in the viewer's URL (a divergence) is selected once drawn
        src = page.get_attribute("#graph-frame", "src")
        target = node_id[len("node-name-") :]
        viewer = browser.new_page(viewport={"width": 1100, "height": 800})
        viewer.on("request", lambda r: None if r.url.startswith(served.url) else elsewhere.append(r.url))
        viewer.goto(served.url + src + "&" + urllib.parse.urlencode({"select": target}))
        viewer.wait_for_selector(f"body[data-studio-selected='{target}']", timeout=90_000)
        expect(viewer.locator("#sidebar")).to_contain_text(target)
        viewer.close()

        # another file: the int8 variant
        page.locator("#graph-choice label", has_text="int8").click()
        expect(page.locator("#graph-frame")).to_have_attribute("data-file", "variants/model.int8.onnx")
        expect(frame.locator("#canvas .graph-input").first).to_be_attached(timeout=90_000)
        assert frame.locator("#canvas .graph-node").count() > 50
        browser.close()
    assert elsewhere == []  # offline: every request went to the studio itself
    if os.environ.get("STUDIO_UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, Path(__file__).resolve().parents[1] / "assets" / "graph.png")


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
