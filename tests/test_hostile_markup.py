"""Hostile names never become markup (issue 25, section 2): every string an upload holds (column names, cells,
categories, class labels, architecture names, file names) is planted with `<img onerror>`, `<script>`,
`<svg onload>`, `"><img`, `[x](javascript:…)` and backtick break-outs, and report.md, the page's summary /
diagnosis Markdown and its HTML cards are rendered (Markdown by markdown-it, CommonMark + tables) and
parsed: no element or attribute comes from the planted text, and the text is still there, as text.

The real conversions are a tiny Hugging Face model (its config.json's `architectures` and `id2label`
planted) and the built-in demo with its columns renamed; the fields no real conversion fills (checker
and exporter messages, variant errors, ...) are planted in a Report made here."""

from __future__ import annotations

import csv
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import tiny
from markdown_it import MarkdownIt

from studio.app import cards, render, worker
from studio.errors import ExportError
from studio.pipeline import convert
from studio.report.model import (
    CandidateRow,
    CheckerInfo,
    Comparison,
    DynamicInfo,
    ExportAttempt,
    ExportInfo,
    GraphInfo,
    LatencyInfo,
    OutputDiff,
    ParityInfo,
    Probe,
    Report,
    TensorInfo,
    Timing,
    VariantInfo,
)
from studio.report.render import markdown_table, md_inline, render_markdown
from studio.spec import ConvertSpec

DEMO = Path(__file__).resolve().parents[1] / "studio" / "demo"
PAYLOADS = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "<svg onload=alert(1)>",
    '"><img src=x>',
    "[x](javascript:alert(1))",
    "a`<img src=x onerror=alert(1)>`b",
    "``x``",
]
# more ways Markdown makes elements: emphasis, autolinks, images, entities, lists, headings, code, tables, math
MORE = [
    "*em* _u_ ~~s~~",
    "www.evil.example",
    "http://evil.example/x",
    "![i](x.png)",
    "&lt;b&gt; &amp;",
    "- item",
    "1. one",
    "# head",
    "    indented",
    "[ ] box",
    "a | b",
    "$$x$$",
    "<b>bold</b>",
    "\\*not em\\*",
]
# what the Markdown we write may hold (markdown-it's names), and the HTML cards'
MD_TAGS = {"p", "strong", "em", "code", "pre", "table", "thead", "tbody", "tr", "th", "td", "ul", "li", "h1", "h2"}
HTML_TAGS = {"div", "span", "code", "table", "tr", "th", "td", "ul", "li", "b", "br"}
HTML_ATTRS = {"class", "id", "title", "data-check", "data-ok", "data-input"}


class _Parsed(HTMLParser):
    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, attrs))

    def handle_data(self, data):
        self.text.append(data)


def md_to_html(md: str) -> str:
    return MarkdownIt("commonmark").enable("table").render(md)


def assert_inert(html: str, planted: list[str], tags: set[str], attrs: set[str] = frozenset()) -> _Parsed:
    """Only our own elements and attributes in `html`, and every planted string in its text."""
    doc = _Parsed(html)
    foreign = [(t, a) for t, a in doc.elements if t not in tags]
    assert not foreign, foreign
    odd = [(t, a) for t, a in doc.elements for name, value in a if name not in attrs and name != "class"]
    assert not odd, odd
    code_classes = {v for t, a in doc.elements for n, v in a if n == "class" and t == "code"}
    assert code_classes <= {"language-text"}, code_classes
    text = " ".join("".join(doc.text).split())
    missing = [p for p in planted if " ".join(p.split()) not in text]
    assert not missing, (missing, text[:3000])
    return doc


# --------------------------------------------------------------------------------------------------
# the helpers themselves


@pytest.mark.parametrize("value", PAYLOADS + MORE)
@pytest.mark.parametrize("where", ["prose", "list item", "bold", "table cell"])
def test_md_inline_makes_no_element_anywhere_in_a_line(value, where):
    md, tags = {
        "prose": (f"Column {md_inline(value)} is ignored.", {"p"}),
        "list item": (f"- {md_inline(value)}", {"ul", "li"}),
        "bold": (f"**{md_inline(value)}**", {"p", "strong"}),
        "table cell": (
            markdown_table(["column", "role"], [[value, "text"]]),
            {"table", "thead", "tbody", "tr", "th", "td"},
        ),
    }[where]
    assert_inert(md_to_html(md), [value], tags)


def test_md_inline_leaves_words_and_numbers_as_they_are():
    """report.md stays readable as text: numbers, names, shapes and our own words are not escaped."""
    for plain in ("top-5 100.0%", "1.5e-07", "lin2 (Linear)", "input_ids", "unavailable: no CUDA device", "±3.1%"):
        assert md_inline(plain) == plain
    for cell in ("[batch, sequence]", "-", "  torchscript"):
        assert md_inline(cell, cell=True) == cell
    for active in ("_x_", "www.a.b", "http://a.b", "- x", "1. x", "[ ] x", "a|b", "a`b"):
        assert md_inline(active) != active


def test_a_fenced_block_holds_any_backtick_run():
    text = "before\n```\n<img src=x onerror=alert(1)>\n````js\nafter ``x``"
    html = md_to_html(render.fenced(text) + "\n\n**after**")
    doc = assert_inert(html, ["<img src=x onerror=alert(1)>", "after ``x``"], {"pre", "code", "p", "strong"})
    assert [t for t, _ in doc.elements].count("pre") == 1 and "```" in "".join(doc.text)


# --------------------------------------------------------------------------------------------------
# a real conversion of a tiny Hugging Face model, every name planted


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


@pytest.fixture(scope="module")
def hf_converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-hf")
    ckpt_name = "ck a`<img src=x onerror=alert(1)>`b [x](javascript:alert(1)) ``x``"
    folder = tiny.make_hf_folder(root / ckpt_name)
    config = json.loads((folder / "config.json").read_text())
    arch = '<svg onload=alert(1)>`x`"><img src=x>BertForSequenceClassification'
    config["architectures"] = [arch]
    labels = [PAYLOADS[0], PAYLOADS[4], PAYLOADS[5]]
    config["id2label"] = {str(i): x for i, x in enumerate(labels)}
    config["label2id"] = {x: i for i, x in enumerate(labels)}
    (folder / "config.json").write_text(json.dumps(config))
    columns = ["text" + PAYLOADS[0], "cat" + PAYLOADS[5], "id" + PAYLOADS[1], "n" + PAYLOADS[6]]
    cells = PAYLOADS[2:5]  # the categories (short strings) of the category column
    rows = [[" ".join(tiny.WORDS[i : i + 9]), cells[i % 3], PAYLOADS[i], str(i)] for i in range(5)]
    sample = _write_csv(root / 's <svg onload=alert(1)> "><img src=x> ``x``.csv', columns, rows)
    spec = ConvertSpec(
        checkpoint=str(folder),
        data=str(sample),
        out=str(root / "out"),
        latency_budget_s=0.05,
        cuda=False,
        roles={columns[3]: "ignore"},
    )
    report = convert(spec)
    planted = {
        "columns": columns,
        "categories": cells,
        "labels": labels,
        "arch": arch,
        "ckpt": ckpt_name,
        "sample": sample.name,
    }
    return report, root / "out", spec, planted


def test_report_md_of_a_real_conversion_holds_no_markup(hf_converted):
    report, out, _, planted = hf_converted
    assert report.ok, report.failed_checks
    md = (out / "report.md").read_text()
    assert "## Warnings" in md and "## Column roles" in md  # the sections the names land in
    texts = planted["columns"] + planted["categories"] + [planted["arch"], planted["ckpt"], planted["sample"]]
    assert_inert(md_to_html(md), texts, MD_TAGS)


def test_the_pages_summary_of_a_real_conversion_holds_no_markup(hf_converted):
    report, _, _, planted = hf_converted
    md = render.summary_md(report)
    texts = planted["columns"] + planted["categories"] + [planted["arch"], planted["ckpt"], planted["sample"]]
    assert_inert(md_to_html(md), texts, MD_TAGS)


def test_the_pages_cards_of_a_real_preview_hold_no_markup(hf_converted):
    """The checkpoint card (labels, architecture reason), the sample card, the mapping line (its error
    quoting the column names too), the verdict: HTML with the planted text as text."""
    report, _, spec, planted = hf_converted
    payload = {"checkpoint": spec.checkpoint, "data": spec.data, "spec": spec.validated(), "roles": {}}
    res = worker.task_preview(payload, lambda *a: None)
    assert res["model_error"] is None and res["data_error"] is None, res
    model_card = cards.model_html(res["model"], None, planted["ckpt"])
    assert_inert(model_card, planted["labels"] + [planted["arch"], planted["ckpt"]], HTML_TAGS, HTML_ATTRS)
    sample_card = cards.sample_html(res["columns"], res["rows"], None, planted["sample"])
    assert_inert(sample_card, [planted["sample"]], HTML_TAGS, HTML_ATTRS)
    mapping = cards.mapping_html(res["mapping"], True, True)
    assert res["mapping"]["ok"] and 'data-ok="true"' in mapping
    assert_inert(mapping, [], HTML_TAGS, HTML_ATTRS)
    roles = dict.fromkeys(planted["columns"], "ignore")
    bad = worker.task_check({**payload, "roles": roles}, lambda *a: None)
    assert not bad["ok"]
    assert_inert(cards.mapping_html(bad, True, True), [], HTML_TAGS, HTML_ATTRS)
    message = f"{planted['sample']}: column {planted['columns'][1]!r} is odd"
    assert_inert(cards.model_html(None, message, planted["ckpt"]), [planted["ckpt"], message], HTML_TAGS, HTML_ATTRS)
    assert_inert(cards.sample_html([], [], message, planted["sample"]), [message], HTML_TAGS, HTML_ATTRS)
    assert_inert(render.error_html(message, planted["arch"]), [planted["arch"], message], HTML_TAGS, HTML_ATTRS)
    assert_inert(render.verdict_html(report), [], HTML_TAGS, HTML_ATTRS)


def test_the_pages_tables_get_the_names_and_cells_as_they_are(hf_converted):
    """gr.Dataframe shows plain strings as text (datatype "str"; the browser test looks at it): the frames
    hold the upload's names, cells and labels unescaped, never made into HTML or Markdown here."""
    report, _, _, planted = hf_converted
    preds = render.predictions_frame(report)
    assert planted["columns"][1] in preds.columns and planted["columns"][2] in preds.columns
    assert set(preds[planted["columns"][1]]) == set(planted["categories"])
    assert set(preds["prediction"]) <= set(planted["labels"])
    rows = {tuple(r) for r in render.io_frame(report).values.tolist()}
    assert ("input", "input_ids", "int64", "[batch, sequence]") in rows


# --------------------------------------------------------------------------------------------------
# the demo with its columns renamed: the tabular feeds table, a multimodal checkpoint's file name


def test_the_demo_with_hostile_columns_and_file_names(tmp_path):
    ckpt = tmp_path / "m a`<img src=x onerror=alert(1)>`b [x](javascript:alert(1)).pt"
    shutil.copyfile(DEMO / "demo_model.pt", ckpt)
    with (DEMO / "sample.csv").open() as f:
        header, *rows = list(csv.reader(f))
    header = ["id" + PAYLOADS[2], "review" + PAYLOADS[4], "price" + PAYLOADS[0], "qty" + PAYLOADS[6], "l" + PAYLOADS[3]]
    for r in rows:
        r[0] = PAYLOADS[int(r[0][-1]) % len(PAYLOADS)]
    sample = _write_csv(tmp_path / "s``x``.csv", header, rows)
    tabular = {"price": (header[2],), "quantity": (header[3],)}
    spec = ConvertSpec(
        checkpoint=str(ckpt),
        data=str(sample),
        out=str(tmp_path / "out"),
        latency_budget_s=0.05,
        cuda=False,
        tabular=tabular,
    )
    report = convert(spec)
    assert report.ok, report.failed_checks
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Tabular inputs" in md
    assert_inert(md_to_html(md), [*header, ckpt.name], MD_TAGS)
    assert_inert(md_to_html(render.summary_md(report)), [*header, ckpt.name], MD_TAGS)
    assert set(render.predictions_frame(report)[header[0]]) <= set(PAYLOADS)


# --------------------------------------------------------------------------------------------------
# every other string a report holds (messages that quote names), planted in a Report made here


def _report(word) -> Report:
    """A Report with every string field from `word(i)`: hostile or plain, the same report otherwise."""
    w = iter(range(1000))
    s = lambda: word(next(w))  # noqa: E731
    t = Timing(1.0, 2.0, 3.0, 10, 3, 8, 2, s())
    diff = OutputDiff(s(), 1e-7, 1e-6, False, 1.0, note=s(), torch_nan=1)
    parity = ParityInfo(False, 1e-4, 1e-3, [diff], rows=3, error=s())
    winner = s()
    return Report(
        source={"kind": s(), "path": s(), "task": s(), "task_reason": s()},
        roles={s(): s(), s(): "ignore"},
        export=ExportInfo(
            winner,
            18,
            18,
            1.0,
            attempts=[ExportAttempt(s(), False, error=s(), note=s()), ExportAttempt(winner, True, note=s())],
            reason=s(),
        ),
        graph=GraphInfo([TensorInfo(s(), s(), [s(), 8])], [TensorInfo(s(), "float32", [2])], {s(): 3}, 10, 18, s()),
        checker=CheckerInfo(False, s()),
        parity=parity,
        dynamic=DynamicInfo(False, [Probe(1, 8, False, 0.1, s(), s())], {s(): [s()]}),
        latency=LatencyInfo(ort_cpu=t, errors={"torch_cpu": s()}, cuda_unavailable_reason=s()),
        variants=[
            VariantInfo(
                s(), s(), False, 10, parity, None, LatencyInfo(ort_cpu=t), s(), s(), s(), s(), [s(), s()], {"rule": s()}
            )
        ],
        comparison=Comparison(
            [CandidateRow(winner, True, opset=18, ort_cpu=t), CandidateRow(s(), False, error=s())],
            winner,
            s(),
            0.05,
            2,
            0.5,
        ),
        warnings=[s(), s()],
        divergence={
            "found": True,
            "exporter": s(),
            "first": {
                **dict.fromkeys(("value", "node", "op_type", "module", "module_type"), s()),
                **{"call": 0, "shape": [2], "max_abs_diff": 1.0, "max_rel_diff": 1.0},
                **{"inputs_max_abs_diff": 0.0, "ok": False, "position": 3},
            },
            "message": s(),
        },
    )


def _hostile(i: int) -> str:
    return (PAYLOADS + MORE)[i % len(PAYLOADS + MORE)]


def test_every_string_of_a_report_stays_text_in_every_markdown_it_lands_in():
    """report.md, the summary, the diagnosis and the variants line of a Report whose every string is hostile
    have exactly the elements of the same Report with plain words, and show each hostile string."""
    hostile, plain = _report(_hostile), _report(lambda i: f"word{i}")
    error = ExportError(f"The dynamo exporter failed: {PAYLOADS[5]}", details="\n".join(PAYLOADS + MORE))
    pages = [
        render_markdown,
        render.summary_md,
        lambda r: render.diagnosis_md(r, "### dynamo exporter\n\n" + "\n".join(PAYLOADS), error=error),
        render.variants_note,
    ]
    for page in pages:
        doc = assert_inert(md_to_html(page(hostile)), [], MD_TAGS)
        twin = _Parsed(md_to_html(page(plain)))
        assert [t for t, _ in doc.elements] == [t for t, _ in twin.elements], page
    # every planted string lands somewhere in report.md, and is shown there as text
    assert_inert(md_to_html(render_markdown(hostile)), PAYLOADS + MORE, MD_TAGS)
    assert_inert(md_to_html(render.diagnosis_md(None, error=error)), PAYLOADS + MORE, MD_TAGS)  # details: as is


def test_a_megabyte_name_is_escaped_in_linear_time():
    """A column name may be 1,000,000 characters (the sample's cell limit): escaping it is one pass, not a
    stall of the server that renders the summary (each of these took ~0.1-0.3 s here; the regex substitution
    md_text used before took 2 s for a megabyte of backticks)."""
    import time

    for value in ("a" * 10**6, "`" * 10**6, "a_" * 500_000, "<" + "x" * 10**6, "1." + " " * 10**6):
        start = time.perf_counter()
        md_inline(value), md_inline(value, cell=True), render.fenced(value)
        assert time.perf_counter() - start < 2.0, value[:10]
