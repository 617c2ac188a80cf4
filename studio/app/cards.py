"""Preview -> what the page shows before Export: the checkpoint and sample cards, the first rows, the roles
the dropdowns start with and the mapping line; and the escaping the page's other HTML shares (esc,
multiline, cell). No gradio in here, so every function is testable on its own.

Every value in these cards' HTML goes through `esc` (studio.escape.html_text): column names, cells,
labels, architecture and file names come from uploads and must stay text. Table cells for gr.Dataframe
(`cell`) are plain strings: the page's Dataframes show them as text (datatype "str")."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from studio.escape import html_text as esc


def _count(n: int | None) -> str:
    if n is None:
        return "?"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return str(n)


INPUT_KIND_WORDS = {
    "input_ids": "token ids",
    "attention_mask": "attention mask",
    "token_type_ids": "token type ids",
    "tabular": "numbers",
}


def model_html(model: dict | None, error: str | None = None, filename: str | None = None) -> str:
    """The "detected" card for the checkpoint."""
    if error:
        return (
            f'<div class="card card-bad"><div class="card-title">Checkpoint'
            f'{" · " + esc(filename) if filename else ""}</div><div class="msg">{multiline(error)}</div></div>'
        )
    if not model:
        return (
            '<div class="card card-empty"><div class="card-title">Checkpoint</div>'
            '<div class="muted">Upload a checkpoint (a file, or a .zip of a model folder) to see what it '
            "expects.</div></div>"
        )
    inputs = "".join(
        f'<li><code>{esc(i["name"])}</code> <span class="muted">{esc(INPUT_KIND_WORDS.get(i.get("kind"), i.get("kind")))}'
        + (f" from column <code>{esc(i['column'])}</code>" if i.get("column") else "")
        + (f", width {esc(i['width'])}" if i.get("width") else "")
        + ("" if i.get("required", True) else ", optional")
        + "</span></li>"
        for i in model.get("inputs", [])
    )
    tok = model.get("tokenizer")
    facts = [
        ("kind", esc(model.get("kind"))),
        *(
            [("task", f'{esc(model["task"])} <span class="muted">({esc(model.get("task_reason") or "")})</span>')]
            if model.get("task")
            else []
        ),
        ("architecture", esc(model.get("architecture") or model.get("model_type") or "-")),
        ("parameters", _count(model.get("parameters"))),
        ("tokenizer", f'<span class="ok">✓ {esc(tok)}</span>' if tok else '<span class="bad">✗ none found</span>'),
        ("outputs", ", ".join(f"<code>{esc(o)}</code>" for o in model.get("outputs", [])) or "-"),
    ]
    if model.get("labels"):
        labels = [str(x) for x in model["labels"]]
        facts.append(("labels", esc(", ".join(labels[:12]) + (" …" if len(labels) > 12 else ""))))
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    return (
        f'<div class="card card-good"><div class="card-title">Checkpoint'
        f"{' · ' + esc(filename) if filename else ''}</div>"
        f'<table class="facts">{rows}</table>'
        f'<div class="subhead">Model inputs it expects</div><ul class="inputs">{inputs}</ul></div>'
    )


def sample_html(columns: list[dict], rows: list[dict], error: str | None = None, filename: str | None = None) -> str:
    if error:
        return (
            f'<div class="card card-bad"><div class="card-title">Sample'
            f'{" · " + esc(filename) if filename else ""}</div><div class="msg">{multiline(error)}</div></div>'
        )
    if not columns:
        return (
            '<div class="card card-empty"><div class="card-title">Sample</div>'
            '<div class="muted">Upload a few real rows (CSV, TSV, JSON or JSONL).</div></div>'
        )
    kinds: dict[str, int] = {}
    for c in columns:
        kinds[c.get("detected", "?")] = kinds.get(c.get("detected", "?"), 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in kinds.items())
    return (
        f'<div class="card card-good"><div class="card-title">Sample'
        f"{' · ' + esc(filename) if filename else ''}</div>"
        f"<div>{len(columns)} columns ({esc(summary)}); first {len(rows)} rows below.</div></div>"
    )


def preview_frame(rows: list[dict], columns: list[dict] | None = None) -> pd.DataFrame:
    names = [c["name"] for c in columns or []] or (list(rows[0].keys()) if rows else [])
    return pd.DataFrame([{n: cell(r.get(n)) for n in names} for r in rows], columns=names)


def cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def initial_roles(columns: list[dict], mapping: dict | None) -> dict[str, str]:
    """Dropdown values after upload: the model-aware roles when the model was checked, else the
    sample-only suggestion."""
    final = (mapping or {}).get("roles") or {}
    return {c["name"]: final.get(c["name"], c.get("suggested", "ignore")) for c in columns}


def mapping_html(mapping: dict | None, have_model: bool, have_sample: bool) -> str:
    """Whether the current mapping can feed the model, said before export."""
    if not (have_model and have_sample):
        missing = [w for w, have in (("a checkpoint", have_model), ("a sample file", have_sample)) if not have]
        return (
            f'<div class="mapping mapping-wait">The mapping is checked against the model once '
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} uploaded.</div>"
        )
    if mapping is None:
        return '<div class="mapping mapping-wait">Checking the mapping…</div>'
    if not mapping.get("ok"):
        return (
            f'<div class="mapping mapping-bad" data-ok="false"><b>✗ This mapping cannot feed the model.</b>'
            f'<div class="msg">{multiline(mapping.get("error") or "")}</div></div>'
        )
    tensors = mapping.get("tensors") or {}
    parts = ", ".join(
        f"<code>{esc(n)}</code> {esc(t['dtype'])}[{esc(', '.join(map(str, t['shape'])))}]" for n, t in tensors.items()
    )
    feeds = mapping.get("feeds") or {}
    order = "".join(
        f'<div class="feeds" data-input="{esc(n)}"><code>{esc(n)}</code> ← '
        + ", ".join(f"{esc(f['column'])} [{_index(f)}]" for f in cols)
        + "</div>"
        for n, cols in feeds.items()
        if len(cols) > 1
    )
    return f'<div class="mapping mapping-ok" data-ok="true"><b>✓ Mapping OK.</b> The sample makes: {parts}{order}</div>'


def _index(f: dict) -> str:
    start, width = int(f["start"]), int(f["width"])
    return str(start) if width == 1 else f"{start}-{start + width - 1}"


def multiline(text: str) -> str:
    return "<br>".join(esc(line) for line in str(text).splitlines())
