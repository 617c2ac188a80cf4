"""Plain functions between the page and the engine: UI values -> ConvertSpec (the one mapping), and
Report / preview results -> what the page shows (HTML, tables, chart data). No gradio in here, so
every function is testable on its own; numbers are formatted by studio.report's row helpers."""
from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from .. import demo
from ..errors import StudioError
from ..report import (LATENCY_LABELS, PARITY_COLUMNS, Report, io_rows, latency_rows, parity_rows, probe_rows,
                      variant_rows, worst_diff)
from ..spec import parse_sample_limits
from ..spec import (ATOL_DEFAULT, DYNAMIC_AXES, EXPORTERS, ID_DTYPES, OPSET_DEFAULT, OPSET_MAX, OPSET_MIN,
                    ROLES, RTOL_DEFAULT, VARIANTS, ConvertSpec, parse_roles, parse_tabular)

# the demo ships inside the package (studio/demo, found with importlib.resources): an installed studio has it
DEMO_CHECKPOINT = demo.checkpoint()
DEMO_SAMPLE = demo.sample()
DEMO_DIR = DEMO_CHECKPOINT.parent

OPSETS = list(range(OPSET_MIN, OPSET_MAX + 1))
# Seconds per latency measurement in the app (the CLI's default is ConvertSpec.latency_budget_s = 1.0).
# Four to eight measurements run per conversion, so this keeps Load demo -> Export -> results well inside
# 15 s on a 2-core machine; the control under "Advanced" (and the API's latency_budget) sets it per run,
# and report.json records the value used.
LATENCY_BUDGET_DEFAULT = 0.5
# The page says auto / new / legacy; the spec says auto / dynamo / torchscript.
EXPORTER_CHOICES = [("auto", "auto"), ("new (dynamo)", "dynamo"), ("legacy (TorchScript)", "torchscript")]
EXPORTER_ALIASES = {"new": "dynamo", "legacy": "torchscript", "torch.export": "dynamo"}
# The "Faster variants" checkboxes: (label, value); each is built beside model.onnx, checked against
# PyTorch like model.onnx and timed side by side with it (studio/variants.py).
VARIANT_CHOICES = [("optimized: ONNX Runtime fusions (ONNX Runtime only)", "optimized"),
                   ("int8: dynamic quantization, for CPU", "int8"),
                   ("fp16: for CUDA (checked on CPU when there is no GPU)", "fp16")]
SAMPLE_TYPES = [".csv", ".tsv", ".json", ".jsonl", ".ndjson", ".txt"]
CHECKPOINT_TYPES = [".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".zip", ".tar", ".pt2"]

IO_HEADERS = ["", "name", "dtype", "shape"]
PARITY_HEADERS = list(PARITY_COLUMNS)
PROBE_HEADERS = ["varies", "batch", "sequence", "verdict", "max abs diff", "message"]
LATENCY_HEADERS = ["run", "p50 ms", "p90 ms", "p99 ms", "iterations", "batch", "threads", "provider"]
# the columns of studio.report.variant_rows (its Markdown table, with the app's own words)
VARIANT_HEADERS = ["variant", "verdict", "size", "max abs diff", "min cosine", "argmax agreement", "ORT CPU p50 ms",
                   "speedup vs PyTorch", "speedup vs model.onnx", "how built / error"]
ATTEMPT_HEADERS = ["exporter", "ok", "seconds", "opset written", "error"]
COLUMN_HEADERS = ["column", "detected", "example", "suggested", "why"]


# --------------------------------------------------------------------------------------------------
# UI values -> ConvertSpec


def _json_object(text: str, what: str, shape: str, example: str) -> dict:
    """A JSON object the page / API sent; a StudioError saying what is wrong otherwise."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise StudioError(f"{what} are not valid JSON: {e.msg} (line {e.lineno}, column {e.colno}).",
                          hint=f"Send {example}.") from e
    if not isinstance(data, dict):
        raise StudioError(f"{what} must be a JSON object of {shape}.")
    return data


def parse_roles_value(value: Any) -> dict[str, str]:
    """Roles as the page / API send them: a dict, a JSON object, or `COL=ROLE` lines (as the CLI)."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        roles = {str(k): str(v).strip().lower() for k, v in value.items()}
    else:
        text = str(value).strip()
        if text.startswith("{"):
            data = _json_object(text, "Roles", "column -> role",
                                'an object like {"review": "text", "price": "tabular"}')
            roles = {str(k): str(v).strip().lower() for k, v in data.items()}
        else:
            roles = parse_roles([s for s in re.split(r"[\n;]", text) if s.strip()])
    for col, role in roles.items():
        if role not in ROLES:
            raise StudioError(f"Role {role!r} for column {col!r} is not one of {', '.join(ROLES)}.")
    return roles


def parse_axes(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value) if v]
    return tuple(str(v).strip().lower() for v in value)


def parse_per_input(value: Any) -> dict[str, tuple[str, ...]]:
    """Per-input dynamic axes: {"input_ids": ["batch"], "price": []} as a dict or JSON text."""
    if value is None or value == "" or value == {}:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise StudioError(f"Per-input dynamic dimensions are not valid JSON: {e.msg}.") from e
    if not isinstance(value, dict):
        raise StudioError('Per-input dynamic dimensions must be an object like {"input_ids": ["batch"]}.')
    return {str(k): parse_axes(v) for k, v in value.items()}


def parse_variants(value: Any) -> tuple[str, ...]:
    """Variants as the page / API send them: a list, or a comma string like "int8,fp16" (as the CLI).
    Names are checked by ConvertSpec.validated(), which names the choices."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = re.split(r"[,\s]+", value)
    names = dict.fromkeys(str(v).strip().lower() for v in value if str(v).strip())  # each once
    order = {v: i for i, v in enumerate(VARIANTS)}
    return tuple(sorted(names, key=lambda n: order.get(n, len(order))))  # build order, as the CLI


def _number(value: Any, name: str, default: float | None) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        x = float(value)
    except (TypeError, ValueError) as e:
        raise StudioError(f"{name} must be a number, got {value!r}.") from e
    if math.isnan(x):
        return default
    return x


def parse_tabular_value(value: Any) -> dict[str, tuple[str, ...]]:
    """Tabular feeds as the page / API send them: a dict {input: [columns]}, a JSON object, or
    `INPUT=COL1,COL2,...` lines (as the CLI's --tabular; FIRST..LAST is a range). Blank: none chosen."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, dict):
        data = value
    else:
        text = str(value).strip()
        if not text.startswith("{"):
            return parse_tabular([ln for ln in text.splitlines() if ln.strip()])
        data = _json_object(text, "Tabular inputs", "input -> list of columns",
                            '{"features": ["a", "b"]} or lines like features=a,b')
    return {str(k): (v,) if isinstance(v, str) else tuple(str(c) for c in v) for k, v in data.items()}


def tabular_text(feeds: dict[str, Any]) -> str:
    """{input: [columns]} -> the `INPUT=COL1,COL2,...` lines shown in the page."""
    return "\n".join(f"{name}={','.join(cols)}" for name, cols in feeds.items() if cols)


def set_feed(text: str, columns: list[str], column: str, choice: str) -> str:
    """The tabular-inputs text after choosing which input `column` feeds ("auto": the studio decides).
    Ranges are spelled out (in file order) so that one column can move; a chosen column is appended to its
    input's list, so the order shown is the order of the choices (edit the text to reorder)."""
    from ..tabular import expand_columns
    try:
        feeds = {n: expand_columns(c, columns) for n, c in parse_tabular_value(text).items()}
    except StudioError:
        feeds = {}
    for cols in feeds.values():
        if column in cols:
            cols.remove(column)
    if choice and choice != "auto":
        feeds.setdefault(choice, []).append(column)
    return tabular_text(feeds)


def feed_choice(text: str, columns: list[str], column: str) -> str:
    """Which input the tabular-inputs text makes `column` feed ("auto" when it names none)."""
    from ..tabular import expand_columns
    try:
        for name, cols in parse_tabular_value(text).items():
            if column in expand_columns(cols, columns):
                return name
    except StudioError:
        pass
    return "auto"


def spec_from_ui(checkpoint: str | None, sample: str | None, roles: Any = None, opset: Any = OPSET_DEFAULT,
                 exporter: str = "auto", dynamic: Any = DYNAMIC_AXES, dynamic_per_input: Any = None,
                 max_length: Any = 128, atol: Any = ATOL_DEFAULT, rtol: Any = RTOL_DEFAULT,
                 id_dtype: str = "int64", fill_value: Any = None, latency_budget: Any = None,
                 variants: Any = None, tabular: Any = None, task: Any = "auto", *, out: str | Path,
                 trust_code: bool = False, sample_limits: Any = None) -> ConvertSpec:
    """The one mapping from the page's controls (or the API's arguments) to a validated ConvertSpec."""
    if not checkpoint:
        raise StudioError("No checkpoint uploaded.", hint="Upload a checkpoint file or a .zip of a model "
                                                          "folder, or press Load demo.")
    if not sample:
        raise StudioError("No sample file uploaded.", hint="Upload a few rows as CSV, TSV, JSON or JSONL, "
                                                           "or press Load demo.")
    exporter = EXPORTER_ALIASES.get(str(exporter or "auto").strip().lower(), str(exporter or "auto").strip().lower())
    if exporter not in EXPORTERS:
        raise StudioError(f"Exporter {exporter!r} is not one of auto, new, legacy.")
    try:
        opset_i = int(float(opset if opset not in (None, "") else OPSET_DEFAULT))
        max_len = int(float(max_length if max_length not in (None, "") else 128))
    except (TypeError, ValueError) as e:
        raise StudioError(f"Opset and max sequence length must be whole numbers ({e}).") from e
    budget = _number(latency_budget, "Latency budget", LATENCY_BUDGET_DEFAULT)
    if budget is not None and budget <= 0:
        raise StudioError(f"Latency budget must be more than 0 s, got {budget:g}.")
    id_dtype = str(id_dtype or "int64").strip().lower()
    if id_dtype not in ID_DTYPES:
        raise StudioError(f"Id dtype {id_dtype!r} is not one of {', '.join(ID_DTYPES)}.")
    return ConvertSpec(
        checkpoint=str(checkpoint), data=str(sample), out=str(out), roles=parse_roles_value(roles),
        opset=opset_i, exporter=exporter, dynamic=parse_axes(dynamic),
        dynamic_per_input=parse_per_input(dynamic_per_input), max_length=max_len, id_dtype=id_dtype,
        atol=_number(atol, "atol", ATOL_DEFAULT), rtol=_number(rtol, "rtol", RTOL_DEFAULT),
        fill_value=_number(fill_value, "Fill value", None), latency_budget_s=budget,
        variants=parse_variants(variants), tabular=parse_tabular_value(tabular),
        task=str(task or "auto").strip().lower(), trust_code=bool(trust_code),
        sample_limits=parse_sample_limits(sample_limits),  # the operator's --sample-limits, never the page's
    ).validated()


def per_input_rows(model: dict | None, dynamic: Any) -> list[list[Any]]:
    """Rows of the per-input dynamic-dimension table: [input, batch?, sequence?] from the global choice.
    Tabular inputs have no sequence axis."""
    axes = set(parse_axes(dynamic))
    rows = []
    for i in (model or {}).get("inputs", []):
        seq_ok = i.get("kind") != "tabular"
        rows.append([i["name"], "batch" in axes, seq_ok and "sequence" in axes])
    return rows


def per_input_from_rows(rows: Any) -> dict[str, list[str]]:
    """The per-input table back to {input: [axes]} (an empty dict when the table is empty)."""
    if rows is None:
        return {}
    if isinstance(rows, pd.DataFrame):
        rows = rows.values.tolist()
    elif isinstance(rows, dict):
        rows = rows.get("data", [])
    out: dict[str, list[str]] = {}
    for r in rows:
        if not r or not str(r[0]).strip():
            continue
        flags = [_truthy(x) for x in list(r[1:3]) + [False] * (2 - len(r[1:3]))]
        out[str(r[0])] = [a for a, on in zip(DYNAMIC_AXES, flags) if on]
    return out


def _truthy(x: Any) -> bool:
    if isinstance(x, str):
        return x.strip().lower() in ("true", "1", "yes", "y", "x", "✓")
    return bool(x) and not (isinstance(x, float) and math.isnan(x))


# --------------------------------------------------------------------------------------------------
# Preview -> page


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _count(n: int | None) -> str:
    if n is None:
        return "?"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return str(n)


INPUT_KIND_WORDS = {"input_ids": "token ids", "attention_mask": "attention mask",
                    "token_type_ids": "token type ids", "tabular": "numbers"}


def model_html(model: dict | None, error: str | None = None, filename: str | None = None) -> str:
    """The "detected" card for the checkpoint."""
    if error:
        return (f'<div class="card card-bad"><div class="card-title">Checkpoint'
                f'{" · " + esc(filename) if filename else ""}</div><div class="msg">{_multiline(error)}</div></div>')
    if not model:
        return ('<div class="card card-empty"><div class="card-title">Checkpoint</div>'
                '<div class="muted">Upload a checkpoint (a file, or a .zip of a model folder) to see what it '
                'expects.</div></div>')
    inputs = "".join(
        f'<li><code>{esc(i["name"])}</code> <span class="muted">{esc(INPUT_KIND_WORDS.get(i.get("kind"), i.get("kind")))}'
        + (f' from column <code>{esc(i["column"])}</code>' if i.get("column") else "")
        + (f', width {esc(i["width"])}' if i.get("width") else "")
        + ("" if i.get("required", True) else ", optional") + "</span></li>"
        for i in model.get("inputs", []))
    tok = model.get("tokenizer")
    facts = [("kind", esc(model.get("kind"))),
             *([("task", f'{esc(model["task"])} <span class="muted">({esc(model.get("task_reason") or "")})</span>')]
               if model.get("task") else []),
             ("architecture", esc(model.get("architecture") or model.get("model_type") or "-")),
             ("parameters", _count(model.get("parameters"))),
             ("tokenizer", f'<span class="ok">✓ {esc(tok)}</span>' if tok else '<span class="bad">✗ none found</span>'),
             ("outputs", ", ".join(f"<code>{esc(o)}</code>" for o in model.get("outputs", [])) or "-")]
    if model.get("labels"):
        labels = [str(x) for x in model["labels"]]
        facts.append(("labels", esc(", ".join(labels[:12]) + (" …" if len(labels) > 12 else ""))))
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    return (f'<div class="card card-good"><div class="card-title">Checkpoint'
            f'{" · " + esc(filename) if filename else ""}</div>'
            f'<table class="facts">{rows}</table>'
            f'<div class="subhead">Model inputs it expects</div><ul class="inputs">{inputs}</ul></div>')


def sample_html(columns: list[dict], rows: list[dict], error: str | None = None,
                filename: str | None = None) -> str:
    if error:
        return (f'<div class="card card-bad"><div class="card-title">Sample'
                f'{" · " + esc(filename) if filename else ""}</div><div class="msg">{_multiline(error)}</div></div>')
    if not columns:
        return ('<div class="card card-empty"><div class="card-title">Sample</div>'
                '<div class="muted">Upload a few real rows (CSV, TSV, JSON or JSONL).</div></div>')
    kinds: dict[str, int] = {}
    for c in columns:
        kinds[c.get("detected", "?")] = kinds.get(c.get("detected", "?"), 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in kinds.items())
    return (f'<div class="card card-good"><div class="card-title">Sample'
            f'{" · " + esc(filename) if filename else ""}</div>'
            f'<div>{len(columns)} columns ({esc(summary)}); first {len(rows)} rows below.</div></div>')


def preview_frame(rows: list[dict], columns: list[dict] | None = None) -> pd.DataFrame:
    names = [c["name"] for c in columns or []] or (list(rows[0].keys()) if rows else [])
    return pd.DataFrame([{n: _cell(r.get(n)) for n in names} for r in rows], columns=names)


def _cell(v: Any) -> str:
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
        return (f'<div class="mapping mapping-wait">The mapping is checked against the model once '
                f'{" and ".join(missing)} {"is" if len(missing) == 1 else "are"} uploaded.</div>')
    if mapping is None:
        return '<div class="mapping mapping-wait">Checking the mapping…</div>'
    if not mapping.get("ok"):
        return (f'<div class="mapping mapping-bad" data-ok="false"><b>✗ This mapping cannot feed the model.</b>'
                f'<div class="msg">{_multiline(mapping.get("error") or "")}</div></div>')
    tensors = mapping.get("tensors") or {}
    parts = ", ".join(f'<code>{esc(n)}</code> {esc(t["dtype"])}[{", ".join(map(str, t["shape"]))}]'
                      for n, t in tensors.items())
    feeds = mapping.get("feeds") or {}
    order = "".join(f'<div class="feeds" data-input="{esc(n)}"><code>{esc(n)}</code> ← '
                    + ", ".join(f'{esc(f["column"])} [{_index(f)}]' for f in cols) + "</div>"
                    for n, cols in feeds.items() if len(cols) > 1)
    return (f'<div class="mapping mapping-ok" data-ok="true"><b>✓ Mapping OK.</b> '
            f'The sample makes: {parts}{order}</div>')


def _index(f: dict) -> str:
    start, width = int(f["start"]), int(f["width"])
    return str(start) if width == 1 else f"{start}-{start + width - 1}"


def _multiline(text: str) -> str:
    return "<br>".join(esc(line) for line in str(text).splitlines())


# --------------------------------------------------------------------------------------------------
# Report -> page


def _tick(ok: bool | None) -> tuple[str, str]:
    if ok is None:
        return "–", "na"
    return ("✓", "pass") if ok else ("✗", "fail")


def _fmt(x: float | None) -> str:
    return "-" if x is None else format(x, ".3g")


def verdict_html(report: Report) -> str:
    """The verdict strip: overall, checker, parity (max diff), dynamic dims, variants (when asked), opset
    written, exporter."""
    e = report.export
    tiles = []

    def tile(key: str, title: str, ok: bool | None, detail: str) -> None:
        mark, cls = _tick(ok)
        tiles.append(f'<div class="tile tile-{cls}" data-check="{key}" data-ok="{str(ok).lower()}">'
                     f'<div class="tile-title">{mark} {esc(title)}</div><div class="tile-detail">{detail}</div></div>')

    chk = report.checker
    tile("checker", "ONNX checker", chk.ok if chk else False,
         "model is valid" if chk and chk.ok else esc((chk.message if chk else "did not run")[:160]))
    p = report.parity
    if p is not None:
        worst = worst_diff(p.outputs)  # NaN when a non-finite value makes the difference unknown
        tile("parity", "Parity", p.ok, f"max |Δ| {_fmt(worst)} · atol {p.atol:g}, rtol {p.rtol:g}")
    else:
        tile("parity", "Parity", False, "did not run")
    d = report.dynamic
    if d is None or d.ok is None:
        tile("dynamic", "Dynamic dims", None, "static export")
    else:
        n_ok = sum(pr.ok for pr in d.probes)
        axes = sorted({a for v in d.requested.values() for a in v})
        tile("dynamic", "Dynamic dims", d.ok, f"{n_ok}/{len(d.probes)} probes · {esc(', '.join(axes) or '-')}")
    if report.variants:
        failed = [v.name for v in report.variants if not v.ok]
        tile("variants", "Variants", not failed, f"{len(report.variants) - len(failed)}/{len(report.variants)} passed"
             + (f" · {esc(', '.join(failed))} failed" if failed else ""))
    same = e.opset == e.opset_requested
    tile("opset", f"Opset {e.opset if e.opset is not None else '?'} written", same if e.opset is not None else False,
         f"requested {e.opset_requested}" + ("" if same else " — differs"))
    failed_attempts = [a for a in e.attempts if not a.ok]
    tiles.append(f'<div class="tile tile-info" data-check="exporter"><div class="tile-title">{esc(e.exporter or "-")} exporter</div>'
                 f'<div class="tile-detail">{e.seconds:.1f} s export · {report.seconds:.1f} s total'
                 + (f' · {len(failed_attempts)} fallback' if failed_attempts else "") + "</div></div>")
    ok = report.ok
    head = ("All checks passed" if ok else "Checks failed: " + ", ".join(report.failed_checks))
    return (f'<div id="verdict-strip" class="verdict verdict-{"pass" if ok else "fail"}" data-ok="{str(ok).lower()}">'
            f'<div class="verdict-head">{"✓" if ok else "✗"} {esc(head)}</div>'
            f'<div class="tiles">{"".join(tiles)}</div></div>')


def error_html(message: str, title: str = "Conversion failed") -> str:
    return (f'<div id="verdict-strip" class="verdict verdict-error" data-ok="false">'
            f'<div class="verdict-head">✗ {esc(title)}</div><div class="msg">{_multiline(message)}</div></div>')


def running_html(stage: str = "starting") -> str:
    return (f'<div id="verdict-strip" class="verdict verdict-running" data-ok="running">'
            f'<div class="verdict-head">Converting… {esc(stage)}</div></div>')


def idle_html() -> str:
    return ('<div id="verdict-strip" class="verdict verdict-idle" data-ok="idle">'
            '<div class="verdict-head">No conversion yet</div>'
            '<div class="muted">Upload a checkpoint and sample (or press Load demo), check the mapping, then '
            'press Export.</div></div>')


def frame(headers: list[str], rows: list[list[str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=headers)


def io_frame(report: Report) -> pd.DataFrame:
    return frame(IO_HEADERS, io_rows(report))


def parity_frame(report: Report) -> pd.DataFrame:
    return frame(PARITY_HEADERS, parity_rows(report.parity))


def probe_frame(report: Report) -> pd.DataFrame:
    return frame(PROBE_HEADERS, probe_rows(report.dynamic))


def latency_frame(report: Report) -> pd.DataFrame:
    return frame(LATENCY_HEADERS, latency_rows(report.latency))


def variants_frame(report: Report) -> pd.DataFrame:
    """One row per variant after model.onnx's own row; a failed one shows FAIL and its error."""
    if not report.variants:
        return frame(VARIANT_HEADERS, [])
    return frame(VARIANT_HEADERS, variant_rows(report.variants, report.latency))


def variants_note(report: Report) -> str:
    """The line above the variants table (or instead of it, when none was asked for)."""
    if not report.variants:
        return ("No faster variants were requested: tick optimized, int8 or fp16 under Options to build them, "
                "check each against PyTorch and time them beside model.onnx.")
    failed = [v.name for v in report.variants if not v.ok]
    line = f"**Faster variants** {len(report.variants) - len(failed)}/{len(report.variants)} passed"
    if failed:
        line += f" · ✗ failed: {', '.join(failed)} (the reason is in the last column)"
    line += (" · speedups are ORT CPU p50 at the sample's batch; files under `variants/` in the downloads"
             " and the zip.")
    if any(v.name == "fp16" and "CUDA" not in (v.provider or "") for v in report.variants):
        line += " fp16 is meant for CUDA: its CPU timing is no measure of its GPU speed."
    return line


def attempts_frame(report: Report) -> pd.DataFrame:
    return frame(ATTEMPT_HEADERS, [[a.exporter, "✓" if a.ok else "✗", "-" if a.seconds is None else f"{a.seconds:.1f}",
                                    str(a.opset_written or "-"), a.error or ""] for a in report.export.attempts])


# Bar colours of the latency chart, by runtime (a runtime missing here would not be drawn at all).
LATENCY_COLORS = {"PyTorch": "#ee8a3c", "ONNX Runtime": "#5b6ee1", "ONNX Runtime optimized": "#2a9d8f",
                  "ONNX Runtime int8": "#8e5bd6", "ONNX Runtime fp16": "#c9a227"}


def latency_chart(report: Report) -> pd.DataFrame:
    """p50 per measured run, at the sample's batch and at batch 1: PyTorch, model.onnx and each variant
    (its ONNX Runtime runs, labelled by the variant's name; the variant table says which passed).
    Unavailable runs are left out: the tables say why, a chart never shows a number for them."""
    rows = []

    def add(lat, runtime_of, label_of) -> None:
        if lat is None:
            return
        for source in ({k: getattr(lat, k, None) for k, _ in LATENCY_LABELS}, dict(getattr(lat, "batch1", {}) or {})):
            for key, label in LATENCY_LABELS:
                t = source.get(key)
                runtime = runtime_of(key)
                if t is None or runtime is None:
                    continue
                shape = f"{t.batch}×{t.sequence}" if t.sequence else f"b{t.batch}"
                rows.append({"run": f"{label_of(key, label)} {shape}", "p50 ms": round(float(t.p50_ms), 4),
                             "p90 ms": round(float(t.p90_ms), 4), "runtime": runtime})

    add(report.latency, lambda k: "ONNX Runtime" if k.startswith("ort") else "PyTorch",
        lambda k, label: label.replace("PyTorch", "PT"))
    for v in report.variants or []:  # PyTorch is timed once, in the main runs
        add(v.latency, lambda k, name=v.name: f"ONNX Runtime {name}" if k.startswith("ort") else None,
            lambda k, label, name=v.name: name + (" CUDA" if "cuda" in k else ""))
    return pd.DataFrame(rows, columns=["run", "p50 ms", "p90 ms", "runtime"])


def diff_caption(report: Report) -> str:
    p = report.parity
    if p is None:
        return ""
    return f"Sample rows and shape probes; a check passes within atol {p.atol:g} + rtol {p.rtol:g} × |PyTorch value|."


def diff_chart(report: Report) -> pd.DataFrame:
    """Max |PyTorch − ONNX Runtime| per output on the sample and per shape probe, against atol."""
    rows = []
    if report.parity is not None:
        for o in report.parity.outputs:
            rows.append({"check": f"sample: {o.name}", "max abs diff": _finite(o.max_abs_diff),
                         "verdict": "pass" if o.ok else "fail"})
    if report.dynamic is not None:
        for pr in report.dynamic.probes:
            if pr.max_abs_diff is None:
                continue
            if pr.changed == "sequence" and pr.sequence is not None:
                label = f"seq {pr.sequence}"
            elif pr.changed == "batch":
                label = f"batch {pr.batch}"
            else:
                label = f"b{pr.batch}" + (f"·s{pr.sequence}" if pr.sequence is not None else "")
            rows.append({"check": label, "max abs diff": _finite(pr.max_abs_diff),
                         "verdict": "pass" if pr.ok else "fail"})
    return pd.DataFrame(rows, columns=["check", "max abs diff", "verdict"])


def _finite(x: float) -> float:
    x = float(x)
    return x if math.isfinite(x) else 1e30


def predictions_frame(report: Report) -> pd.DataFrame:
    preds = report.predictions or []
    if not preds:
        return pd.DataFrame()
    cols: list[str] = []
    for r in preds:
        cols += [k for k in r if k not in cols]
    return pd.DataFrame([{c: _cell(r.get(c)) for c in cols} for r in preds], columns=cols)


def summary_md(report: Report) -> str:
    """A few plain lines under the verdict: source, roles, file, how busy the machine was, warnings."""
    roles = ", ".join(f"`{c}` → {r}" for c, r in report.roles.items())
    lines = [f"**Source** `{Path(str(report.source.get('path', ''))).name}` ({report.source.get('kind')}) · "
             f"**Roles** {roles}"]
    if report.source.get("task"):
        lines.append(f"**Task** {report.source['task']} ({report.source.get('task_reason') or '-'})")
    if report.graph is not None:
        lines.append(f"**File** {report.graph.size_bytes:,} bytes · {sum(report.graph.op_counts.values())} nodes · "
                     f"producer {report.graph.producer or '-'}")
    machine = getattr(report.latency, "machine", None) or {}
    load = machine.get("load_avg_after") or machine.get("load_avg_before")
    cpus = machine.get("logical_cpus") or machine.get("cpu")
    if isinstance(load, (int, float)) and isinstance(cpus, (int, float)) and cpus and load > cpus:
        lines.append(f"⚠ Latency was measured while the machine was busy (load average {load:.1f} on {cpus:g} "
                     "CPUs): other processes competed for the CPU.")
    for w in report.warnings:
        lines.append(f"⚠ {w}")
    return "\n\n".join(lines)


def diagnosis_md(report: Report | None, diagnosis: str = "", error: StudioError | None = None) -> str:
    """The exporter's own diagnosis when an export attempt failed (or the whole export did)."""
    parts = []
    if error is not None:
        parts.append(f"**{esc(str(error).splitlines()[0])}**")
        if error.details:
            parts.append(error.details)
    if report is not None:
        failed = [a for a in report.export.attempts if not a.ok]
        for a in failed:
            parts.append(f"**{a.exporter} exporter failed** (the {report.export.exporter} exporter's file was "
                         f"kept):\n\n```\n{(a.error or '').strip()[:4000]}\n```")
        if diagnosis:
            parts.append(diagnosis)
    return "\n\n".join(parts)


DOWNLOAD_ORDER = ("model", "data", "report_json", "report_md", "example", "sample_inputs")


def artifact_paths(report: Report, out: Path, zip_path: str | Path | None) -> list[str]:
    """model.onnx (+ .data), report.json, report.md, inference_example.py, sample_inputs.npz, every
    variant's files (variants/model.int8.onnx, + .data), the zip."""
    files = []
    for key in DOWNLOAD_ORDER:
        name = report.files.get(key)
        if name and (out / name).is_file():
            files.append(str(out / name))
    for name in ("model.onnx.data",):  # in case the engine wrote it but did not list it
        p = out / name
        if p.is_file() and str(p) not in files:
            files.insert(1, str(p))
    for v in report.variants:
        for name in v.files or ([v.file] if v.file else []):
            p = out / name
            if p.is_file() and str(p) not in files:
                files.append(str(p))
    if zip_path and Path(zip_path).is_file():
        files.append(str(zip_path))
    return files


def zip_stem(checkpoint: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(checkpoint)).stem).strip("-.") or "model"
    return f"{stem[:60]}-onnx"


# The folder a zipped upload is unpacked into (studio.sources.load: "studio-ckpt-" + random), wherever it
# lies: messages about its files name them from the archive's root ("model/config.json").
_UNPACK_DIR = re.compile(r"""(?:[A-Za-z]:)?[^\s'"`()\[\]{}<>,;=]*?[\\/]studio-ckpt-[A-Za-z0-9_-]+(?P<sep>[\\/])?""")


def scrub_paths(text: str, paths: list[str | Path | None]) -> str:
    """Say `sample.csv`, not the server's upload folder: drop the folders of the given paths, and the
    temporary folders zipped uploads are unpacked in."""
    import os
    import tempfile
    for p in sorted({str(Path(p).parent) for p in paths if p}, key=len, reverse=True):
        if p not in ("", ".", "/"):
            text = text.replace(p + os.sep, "")
    text = text.replace(os.path.join(tempfile.gettempdir(), "studio-ckpt-"), "/studio-ckpt-")  # even with spaces
    return _UNPACK_DIR.sub(lambda m: "" if m.group("sep") else "(the unpacked upload)", text)
