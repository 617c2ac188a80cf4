"""The Generation panel (after Export, for text-generation / text2text-generation): each prompt with the two
continuations side by side (transformers' `generate` and ONNX Runtime through the exported file), the tokens
that differ marked, the verdict of each run and the decoding speed (time to first token, tokens/s) of each engine.

`generation_html(report)` is the panel's HTML from Report.generation alone (no gradio in it, testable by itself);
`panel()` makes its component (layout) and `update(report)` fills it (convert_outputs). Prompts, continuations,
token texts and messages come from uploads or from the model: every one goes through `esc`
(studio.escape.html_text), so a prompt holding `<script>` is shown as text."""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio.app.cards import esc
from studio.report.model import GenerationInfo, GenerationRun, GenerationSpeed, PromptResult, Report

ELEM_ID = "generation"
PROMPTS_SHOWN = 20  # prompts drawn in the panel (the report holds them all)
ENGINE_WORDS = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime"}

STYLE = """<style>
#generation-panel { border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 12px 14px;
  background: var(--block-background-fill); font-size: 0.92rem; }
#generation-panel.gen-pass { border-left: 4px solid #22a06b; } #generation-panel.gen-fail { border-left: 4px solid #d93f3f; }
#generation-panel .gen-head { font-weight: 700; font-size: 1.02rem; margin-bottom: 4px; }
#generation-panel .gen-runs, #generation-panel .gen-speed { margin: 2px 0 6px; color: var(--body-text-color-subdued); }
#generation-panel .gen-speed table { border-collapse: collapse; font-size: 0.85rem; margin-top: 4px; width: auto; }
#generation-panel .gen-speed td, #generation-panel .gen-speed th { padding: 2px 14px 2px 0; text-align: left;
  border: none; border-bottom: 1px solid var(--border-color-primary); background: none; }
#generation-panel .gen-prompt { border-top: 1px solid var(--border-color-primary); padding: 8px 0 4px; }
#generation-panel .gen-text { font-weight: 600; white-space: pre-wrap; word-break: break-word; }
#generation-panel .gen-cols { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 10px;
  margin-top: 4px; }
#generation-panel .gen-col { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 6px 8px;
  min-width: 0; overflow-wrap: anywhere; }
#generation-panel .gen-cont { white-space: pre-wrap; margin-bottom: 3px; }
#generation-panel .gen-chips { line-height: 1.7; }
#generation-panel .gen-label { font-size: 0.78rem; color: var(--body-text-color-subdued); margin-bottom: 2px; }
#generation-panel .tok { display: inline-block; white-space: pre; border-radius: 3px; padding: 0 1px;
  background: var(--background-fill-secondary); margin: 0 1px 1px 0; }
#generation-panel .tok-diff { background: #fde2e2; color: #8a1f1f; outline: 1px solid #d93f3f; }
#generation-panel .tok-id { font-family: var(--font-mono); font-size: 0.8rem; margin-right: 3px; }
#generation-panel .gen-div { font-size: 0.84rem; margin-top: 3px; }
#generation-panel .ok { color: #145c3d; font-weight: 600; } #generation-panel .bad { color: #8a1f1f; font-weight: 600; }
</style>"""


def _mark(ok: bool | None) -> str:
    return '<span class="ok">✓</span>' if ok else ('<span class="bad">✗</span>' if ok is False else "–")


def _tokens(ids: list[int], texts: list[str], other: list[int]) -> str:
    """One continuation as token chips, those that differ from `other` at the same step marked (tok-diff)."""
    words = texts if len(texts) == len(ids) else None
    chips = []
    for t, tok in enumerate(ids):
        differs = t >= len(other) or other[t] != tok
        cls = "tok tok-diff" if differs else "tok"
        if words is None:
            cls += " tok-id"
        shown = words[t] if words is not None else f"#{tok}"
        chips.append(
            f'<span class="{cls}" data-step="{t}" data-id="{int(tok)}" title="step {t} · id {int(tok)}">{esc(shown)}</span>'
        )
    return f'<div class="gen-chips">{"".join(chips)}</div>' if chips else '<span class="muted">(no new token)</span>'


def _side(label: str, cls: str, text: str, ids: list[int], tokens: list[str], other: list[int]) -> str:
    """One engine's continuation: its decoded text (when the report has it and no per-token texts), then its tokens."""
    whole = f'<div class="gen-cont">{esc(text)}</div>' if text and len(tokens) != len(ids) else ""
    return f'<div class="gen-col {cls}"><div class="gen-label">{esc(label)}</div>{whole}{_tokens(ids, tokens, other)}</div>'


def _prompt(p: PromptResult) -> str:
    ref, got = p.reference_ids, p.onnx_ids
    div = p.divergence
    line = ""
    if div is not None:
        margin = f" · top-2 margin {div.margin:.3g}" if div.margin is not None else ""
        kind = "a near tie (reported, not failed)" if div.near_tie else "a real divergence"
        line = (
            f'<div class="gen-div" data-step="{div.step}">First difference at step {div.step}: PyTorch '
            f"<code>{esc(repr(div.expected_text))}</code> (id {div.expected}), ONNX Runtime "
            f"<code>{esc(repr(div.got_text))}</code> (id {div.got}){esc(margin)} — {esc(kind)}</div>"
        )
    same = "same tokens" if p.same else "tokens differ"
    return (
        f'<div class="gen-prompt" data-prompt="{p.prompt}" data-same="{str(p.same).lower()}">'
        f'<div class="gen-text">{_mark(p.same)} #{p.prompt}: {esc(p.text)}</div>'
        f'<div class="gen-cols">{_side("PyTorch · transformers generate", "gen-ref", p.reference_text, ref, p.reference_tokens, got)}'
        f"{_side(f'ONNX Runtime · exported file ({same})', 'gen-onnx', p.onnx_text, got, p.onnx_tokens, ref)}"
        f"</div>{line}</div>"
    )


def _run_words(run: GenerationRun) -> str:
    share = f", {run.identical_share:.0%} of tokens identical" if run.identical_share is not None else ""
    pad = f", {run.padding_side} padding" if run.padding_side else ""
    err = f": {run.error}" if run.error else ""
    return f"{_mark(run.ok)} {esc(run.mode)} ({len(run.prompts)} prompts{esc(pad)}{esc(share)}){esc(err)}"


def _speed_row(s: GenerationSpeed) -> str:
    engine = ENGINE_WORDS.get(s.engine, s.engine)
    if s.error or s.tokens_per_s is None:
        cells = f'<td colspan="2">not measured: {esc(s.error or "no figure")}</td>'
    else:
        ttft = f"{s.ttft_ms:.3g} ms" if s.ttft_ms is not None else "-"
        cells = f"<td>{s.tokens_per_s:,.1f} tok/s</td><td>first token {esc(ttft)}</td>"
    bound = " · IO binding" if s.io_binding else ""
    return (
        f'<tr data-engine="{esc(s.engine)}" data-provider="{esc(s.provider)}" data-batch="{s.batch}">'
        f"<th>{esc(engine)} · {esc(s.provider)}{esc(bound)}</th><td>batch {s.batch} · {s.new_tokens} new</td>{cells}</tr>"
    )


def _speedup(speed: list[GenerationSpeed], batch: int) -> str:
    rate = {(s.engine, s.provider): s.tokens_per_s for s in speed if s.batch == batch and s.tokens_per_s}
    torch_rate = rate.get(("torch", "torch-cpu"))
    ort_rate = next((v for (e, p), v in rate.items() if e == "onnxruntime" and p == "CPUExecutionProvider"), None)
    if not torch_rate or not ort_rate:
        return ""
    return f"ONNX Runtime CPU decodes {ort_rate / torch_rate:.2f}× as many tokens/s as PyTorch at batch {batch}."


def _speed(speed: list[GenerationSpeed]) -> str:
    if not speed:
        return '<div class="gen-speed">Decoding speed was not measured.</div>'
    rows = "".join(_speed_row(s) for s in speed)
    ratio = _speedup(speed, 1)
    notes = list(dict.fromkeys(n.strip() for s in speed for n in (s.note or "").split(";") if n.strip()))
    said = f'<div class="gen-notes">{esc(" · ".join(notes))}</div>' if notes else ""
    return f'<div class="gen-speed" id="generation-speed">{esc(ratio)}<table>{rows}</table>{said}</div>'


def _variants(info: GenerationInfo) -> str:
    if not info.variants:
        return ""
    parts = []
    for v in info.variants:
        share = v.get("identical_share")
        first = v.get("first_divergence") or None
        where = f", first divergence: prompt {first.get('prompt')}, step {first.get('step')}" if first else ""
        words = f"{share:.0%} identical{where}" if isinstance(share, (int, float)) else (v.get("error") or "no verdict")
        parts.append(f"{_mark(bool(v.get('ok')))} {esc(v.get('name'))}: {esc(words)}")
    return f'<div class="gen-runs" id="generation-variants">Variants judged by generation: {" · ".join(parts)}</div>'


def generation_html(report: Report | None) -> str:
    """The panel for the report's generation check ("" when the model is not a generator)."""
    info = report.generation if report is not None else None
    if info is None:
        return ""
    head = (
        f"{'✓' if info.ok else '✗'} Generation · {esc(info.task)} · "
        f"{'with its cache' if info.with_past else 'without the cache'} · {info.max_new_tokens} new tokens, greedy"
    )
    runs = " · ".join(_run_words(r) for r in info.runs) or "no run"
    error = f'<div class="gen-div bad">{esc(info.error)}</div>' if info.error else ""
    run = next((r for r in info.runs if r.prompts and r.mode == "one by one"), None) or next(
        (r for r in info.runs if r.prompts), None
    )
    prompts = run.prompts[:PROMPTS_SHOWN] if run is not None else []
    more = len(run.prompts) - len(prompts) if run is not None else 0
    tail = f'<div class="muted">… {more} more prompts in report.json</div>' if more > 0 else ""
    shown = f'<div class="gen-label">The {esc(run.mode)} run, prompt by prompt:</div>' if run is not None else ""
    can = f'<div class="gen-runs">{esc(info.can)}</div>' if info.can else ""
    return (
        f'{STYLE}<div id="generation-panel" class="gen-{"pass" if info.ok else "fail"}" '
        f'data-ok="{str(info.ok).lower()}"><div class="gen-head">{head}</div>{can}'
        f'<div class="gen-runs" id="generation-runs">{runs}</div>{error}{_speed(info.speed)}{_variants(info)}'
        f"{shown}{''.join(_prompt(p) for p in prompts)}{tail}</div>"
    )


def panel() -> gr.HTML:
    """The panel's component (hidden until a generator's report fills it)."""
    return gr.HTML("", visible=False, elem_id=ELEM_ID)


def update(report: Report | None) -> Any:
    """The panel's value for a report (shown only for a generator), or hidden and empty (None: an error)."""
    html = generation_html(report)
    return gr.update(value=html, visible=bool(html))
