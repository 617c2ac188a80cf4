"""The Generation panel (studio/app/generation.py): from a Report whose generation is filled, and in a real
browser (Playwright + Debian's chromium) after Export on a tiny GPT-2 folder.

- the panel shows every prompt with both continuations side by side, the differing tokens marked in both, each
  run's verdict, tokens/s per engine and the CUDA row's reason (never a number for it);
- prompts and token texts are text: a prompt holding `<script>` makes no element;
- a model that is not a generator gets no panel (hidden), and an error hides it;
- in chromium: Export on a zipped GPT-2 folder + prompts CSV shows the panel with one block per prompt, both
  continuations holding the report's token counts (screenshot: /tmp/notes/gen-panel.png when /tmp/notes exists).
"""

from __future__ import annotations

import html.parser
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import tiny_lm
from test_app_handlers import make_report

from studio.app import generation as gp
from studio.report.model import GenerationInfo, GenerationRun, GenerationSpeed, PromptResult, TokenDiff

SCRIPT = "<script>alert('x')</script> & <img src=x onerror=alert(1)>"


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def _tags(markup: str) -> list[str]:
    p = _Tags()
    p.feed(markup)
    return p.tags


def _info() -> GenerationInfo:
    same = PromptResult(
        0,
        "the product arrived late",
        [5, 6, 7],
        [5, 6, 7],
        same=True,
        reference_tokens=[" it", " was", " fine"],
        onnx_tokens=[" it", " was", " fine"],
    )
    differs = PromptResult(
        1,
        SCRIPT,
        [8, 9, 10, 11],
        [8, 9, 12, 13],
        same=False,
        divergence=TokenDiff(1, 2, 10, 12, expected_text="<b>", got_text="</div>", margin=0.004, near_tie=True),
        reference_tokens=[" a", " b", "<b>", " d"],
        onnx_tokens=[" a", " b", "</div>", SCRIPT],
    )
    ids_only = PromptResult(2, "good price", [3, 4], [3, 4], same=True)  # no token texts: ids shown
    speed = [
        GenerationSpeed(
            "torch",
            "torch-cpu",
            1,
            3,
            ttft_ms=12.5,
            tokens_per_s=80.0,
            threads=2,
            note="sdpa attention; the machine was busy",
        ),
        GenerationSpeed("onnxruntime", "CPUExecutionProvider", 1, 3, ttft_ms=1.5, tokens_per_s=400.0, threads=2),
        GenerationSpeed("onnxruntime", "CUDAExecutionProvider", 1, 3, error="ORT: no CUDA device is visible"),
    ]
    return GenerationInfo(
        task="text-generation",
        with_past=True,
        ok=True,
        max_new_tokens=4,
        runs=[GenerationRun("one by one", True, [same, differs, ids_only], identical_share=0.78)],
        speed=speed,
        variants=[
            {"name": "int8", "ok": True, "identical_share": 0.75, "first_divergence": {"prompt": 1, "step": 2}},
            {"name": "fp16", "ok": False, "identical_share": None, "error": "could not be built: " + SCRIPT},
        ],
        can="generates text with its cache",
    )


def test_the_panel_shows_both_continuations_marks_differences_and_escapes():
    report = make_report()
    report.generation = _info()
    markup = gp.generation_html(report)
    assert set(_tags(markup)) <= {"style", "div", "span", "table", "tr", "th", "td", "code"}, set(_tags(markup))
    assert "<script>" not in markup and "<img" not in markup and "&lt;script&gt;" in markup
    assert markup.count('class="gen-prompt"') == 3
    # prompt 1 differs at steps 2 and 3: marked in both columns; prompts 0 and 2 have no mark
    assert markup.count("tok tok-diff") == 4
    assert markup.count('data-step="2" data-id="10"') == 1 and markup.count('data-step="2" data-id="12"') == 1
    assert "First difference at step 2" in markup and "near tie" in markup
    assert "#3" in markup and "tok-id" in markup  # no token texts: the ids, as chips
    # the speed: each engine's tokens/s and TTFT, the ratio at batch 1, CUDA's reason without a number
    assert "80.0 tok/s" in markup and "400.0 tok/s" in markup and "first token 1.5 ms" in markup
    assert "5.00× as many tokens/s as PyTorch at batch 1" in markup
    assert "not measured: ORT: no CUDA device is visible" in markup
    assert "sdpa attention · the machine was busy" in markup  # how the figures were taken, said once
    assert "int8: 75% identical, first divergence: prompt 1, step 2" in markup and "fp16: could not be built" in markup
    assert 'data-ok="true"' in markup and "78% of tokens identical" in markup


def test_no_panel_without_a_generator_and_none_after_an_error():
    report = make_report()
    assert report.generation is None and gp.generation_html(report) == ""
    assert gp.update(report)["visible"] is False and gp.update(None)["visible"] is False
    report.generation = _info()
    assert gp.update(report)["visible"] is True


def test_the_app_fills_the_panel_from_the_report(tmp_path):
    import studio.app

    app = studio.app.create_app(warm_up=False)
    try:
        report = make_report()
        report.generation = _info()
        report.files = {"model": "model.onnx"}
        (tmp_path / "model.onnx").write_text("x")
        out = app._report_outputs({"report": report, "zip": None}, tmp_path)
        panel = out[app.ui.generation]
        assert panel["visible"] is True and 'id="generation-panel"' in panel["value"]
        report.generation = None
        assert app._report_outputs({"report": report, "zip": None}, tmp_path)[app.ui.generation]["visible"] is False
    finally:
        app.close()


# --- in a real browser -------------------------------------------------------------------------------


def _gpt2_zip(folder: Path) -> Path:
    model = tiny_lm.model("gpt2")
    src = folder / "tiny-gpt2"
    model.save_pretrained(str(src))
    tiny_lm.tokenizer().save_pretrained(str(src))
    archive = folder / "tiny-gpt2.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(src.iterdir()):
            z.write(f, f"tiny-gpt2/{f.name}")
    return archive


@pytest.fixture(scope="module")
def served():
    import studio.app

    running = studio.app.start(port=0, max_jobs=1, job_timeout_s=300)  # its worker warms up meanwhile
    yield running
    running.close()


def test_export_of_a_gpt2_folder_shows_the_generation_panel(served, tmp_path):
    from test_app_browser import ARGS, CHROMIUM, _browser_or_skip

    sync_playwright = _browser_or_skip()
    archive = _gpt2_zip(tmp_path)
    sample = tmp_path / "prompts.csv"
    prompts = [tiny_lm.PROMPTS[0], "<script>alert(1)</script> it never works"]
    sample.write_text("prompt\n" + "\n".join(f'"{p}"' for p in prompts) + "\n")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(served.url)
        page.wait_for_selector("#load-demo")
        page.set_input_files("#checkpoint-file input[type=file]", str(archive))
        page.set_input_files("#sample-file input[type=file]", str(sample))
        page.wait_for_selector("#mapping-status .mapping-ok, #mapping-status .mapping-bad")
        page.get_by_text("Advanced: tolerances").click()  # the latency budget: the least the timing allows
        page.fill("#latency-budget input", "0.05")
        page.click("#export-btn")
        page.wait_for_selector("#verdict-strip[data-ok='true'], #verdict-strip[data-ok='false']", timeout=240_000)
        page.wait_for_selector("#generation-panel", state="visible", timeout=30_000)
        page.locator("#generation-panel").scroll_into_view_if_needed()
        page.wait_for_timeout(300)
        shot = tmp_path / "gen-panel.png"
        page.locator("#generation").screenshot(path=str(shot))
        blocks = page.locator("#generation-panel .gen-prompt")
        n_blocks = blocks.count()
        chips = [
            (blocks.nth(i).locator(".gen-ref .tok").count(), blocks.nth(i).locator(".gen-onnx .tok").count())
            for i in range(n_blocks)
        ]
        texts = page.locator("#generation-panel .gen-text").all_inner_texts()
        speed = page.inner_text("#generation-speed")
        scripts = page.evaluate(
            "() => document.querySelectorAll('#generation-panel script, #generation-panel img').length"
        )
        verdict = page.get_attribute("#verdict-strip", "data-ok")
        # before the page closes: closing it removes its session folder (the conversion's outputs)
        found = sorted(served.app.sessions.root.rglob("report.json"), key=lambda f: f.stat().st_mtime)
        gen = json.loads(found[-1].read_text())["generation"] if found else None
        browser.close()
    assert shot.stat().st_size > 5_000
    if Path("/tmp/notes").is_dir() and os.access("/tmp/notes", os.W_OK):
        shutil.copyfile(shot, "/tmp/notes/gen-panel.png")
    assert n_blocks == len(prompts), texts
    assert gen is not None, "the conversion wrote no report.json with a generation section"
    run = next(r for r in gen["runs"] if r["mode"] == "one by one")
    # both continuations, token by token: as many chips as the report's new tokens on each side
    assert chips == [(len(q["reference_ids"]), len(q["onnx_ids"])) for q in run["prompts"]], chips
    assert all(ref > 0 and onnx > 0 for ref, onnx in chips), chips
    assert any("<script>alert(1)</script>" in t for t in texts) and scripts == 0 and not dialogs
    assert "tok/s" in speed and "PyTorch" in speed and "ONNX Runtime" in speed
    assert "CUDAExecutionProvider" in speed  # its row: a number only where CUDA really ran, else why not
    assert verdict in ("true", "false")
