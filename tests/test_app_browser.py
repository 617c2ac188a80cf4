"""A real browser (Playwright + Debian's chromium) clicks through the studio: Load demo -> Export -> verdict.

Needs `apt-get install chromium` and `pip install playwright` (it cannot download its own browsers here).
Outside CI the test is skipped when either is missing; in CI (CI=true) a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import studio.app

CHROMIUM = os.environ.get("STUDIO_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("playwright is not installed (pip install playwright)")
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        if os.environ.get("CI"):
            raise AssertionError(f"{CHROMIUM} is missing: apt-get install -y chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    return sync_playwright


@pytest.fixture(scope="module")
def served():
    running = studio.app.start(port=0, max_jobs=2, job_timeout_s=300)
    running.app.warm_up(wait=True)
    yield running
    running.close()


@pytest.fixture()
def page(served):
    sync_playwright = _browser_or_skip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        pg.set_default_timeout(60_000)
        pg.goto(served.url)
        pg.wait_for_selector("#load-demo")
        yield pg
        browser.close()


def _choose_role(page, index: int, role: str) -> None:
    page.locator(".role-dd input").nth(index).click()
    page.locator(f"[data-testid=dropdown-option][aria-label={role}]").first.click()


def test_load_demo_export_shows_the_checks_passed(page, served, tmp_path):
    page.click("#load-demo")
    # what was detected, the first rows, one mapping row per column, and the mapping verdict
    page.wait_for_selector("#mapping-status .mapping-ok")
    assert "multimodal" in page.inner_text("#model-card")
    from playwright.sync_api import expect

    expect(page.locator(".role-dd")).to_have_count(5)
    assert "review" in page.inner_text("#preview-table")

    # an invalid mapping is explained before export, and fixing it clears the message
    _choose_role(page, 2, "ignore")  # price
    page.wait_for_selector("#mapping-status .mapping-bad")
    assert "price" in page.inner_text("#mapping-status")
    _choose_role(page, 2, "tabular")
    page.wait_for_selector("#mapping-status .mapping-ok")

    # no faster variant unless ticked; tick int8 (the cheap one) to see its row in the results
    variants = page.locator("#variants input[type=checkbox]")
    expect(variants).to_have_count(4)  # optimized, int8, int8-static, fp16
    assert [variants.nth(i).is_checked() for i in range(4)] == [False, False, False, False]
    page.locator("#variants label", has_text="int8: dynamic").click()
    expect(variants.nth(1)).to_be_checked()
    expect(page.locator("#repair input[type=checkbox]")).to_be_checked()  # a failing variant is repaired by default

    page.click("#export-btn")
    # the progress bar names the stage while it runs
    page.wait_for_function(
        "() => /(starting|loading|batch|export|checker|parity|shape probe|variants|latency) — /"
        ".test(document.querySelector('#verdict').innerText)",
        timeout=60_000,
    )
    page.wait_for_selector("#verdict-strip[data-ok='true'], #verdict-strip[data-ok='false']", timeout=240_000)
    page.wait_for_timeout(500)
    shot = tmp_path / "studio.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert page.get_attribute("#verdict-strip", "data-ok") == "true", page.inner_text("#verdict")
    for check in ("checker", "parity", "dynamic", "variants", "opset"):
        assert page.get_attribute(f"#verdict-strip [data-check={check}]", "data-ok") == "true", check
    assert "[batch, sequence]" in page.inner_text("#io-table")
    assert "unavailable" in page.inner_text("#latency-table")  # no GPU here: a reason, never a number
    variant_rows = page.inner_text("#variants-table")
    assert "int8" in variant_rows and "PASS" in variant_rows and "1/1 passed" in page.inner_text("#variants-note")
    bars = page.locator("#latency-plot path[role='graphics-symbol']")  # vega's bars, one per timed run
    assert bars.count() == 6, bars.count()  # PyTorch, model.onnx, int8: each at the sample's batch and at 1
    fills = bars.evaluate_all("els => els.map(e => (e.getAttribute('fill') || '').toLowerCase())")
    assert sorted(fills) == sorted([c.lower() for c in ("#ee8a3c", "#5b6ee1", "#8e5bd6")] * 2), fills
    downloads = page.inner_text("#downloads").replace("\n", "")
    for name in (
        "model.onnx",
        "report.json",
        "report.md",
        "inference_example.py",
        "model.int8.onnx",
        "demo_model-onnx.zip",
    ):
        assert name in downloads
    if os.environ.get("STUDIO_UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, Path(__file__).resolve().parents[1] / "assets" / "screenshot.png")


def test_closing_the_page_removes_the_session_folder(served):
    sync_playwright = _browser_or_skip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page()
        pg.goto(served.url)
        pg.wait_for_selector("#load-demo")
        before = set(served.app.sessions.root.iterdir())
        pg.click("#load-demo")
        pg.wait_for_selector("#mapping-status .mapping-ok", timeout=60_000)
        mine = set(served.app.sessions.root.iterdir()) - before
        assert len(mine) == 1
        pg.close(run_before_unload=True)
        browser.close()
    folder = mine.pop()
    for _ in range(100):
        if not folder.exists():
            break
        import time

        time.sleep(0.1)
    assert not folder.exists()


def test_feeds_choice_per_column_shows_the_order_and_is_checked(page):
    page.click("#load-demo")
    page.wait_for_selector("#mapping-status .mapping-ok")
    from playwright.sync_api import expect

    expect(page.locator(".feed-dd")).to_have_count(5)  # the demo model has tabular inputs: price, quantity
    # quantity -> price as well: the model's own quantity input would have no column left
    page.locator(".feed-dd input").nth(3).click()
    page.locator("[data-testid=dropdown-option][aria-label=price]").first.click()
    expect(page.locator("#tabular-feeds textarea")).to_have_value("price=quantity")
    page.wait_for_selector("#mapping-status .mapping-bad")
    assert "is chosen to feed 'price'" in page.inner_text("#mapping-status")
    page.locator(".feed-dd input").nth(3).click()
    page.locator("[data-testid=dropdown-option][aria-label=auto]").first.click()
    expect(page.locator("#tabular-feeds textarea")).to_have_value("")
    page.wait_for_selector("#mapping-status .mapping-ok")
