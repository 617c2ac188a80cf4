"""A generator's report (Report.generation, studio.report.model.GenerationInfo) as table rows and verdict lines:
report.md's Generation section (studio.report.render), the CLI's summary (studio.cli.text) and the page read them.

Rows hold plain text (prompts and continuations as they came: an upload's text); whoever writes them escapes them
for where they go (md_inline in Markdown, terminal on the command line)."""

from __future__ import annotations

import math
from typing import Any

from studio.report.model import GenerationInfo, GenerationRun, GenerationSpeed, PromptResult, TokenDiff

PROMPT_COLUMNS = ["#", "prompt", "transformers", "ONNX Runtime", "same", "max logits diff", "first divergence"]
PROBE_COLUMNS = ["batch", "sequence", "past", "verdict", "max abs diff", "error"]
SPEED_COLUMNS = ["engine", "provider", "batch", "prompt tokens", "new tokens", "TTFT ms", "tokens/s", "threads", "note"]
VARIANT_COLUMNS = ["variant", "verdict", "identical tokens", "first divergence", "rule / error"]
PROMPT_CHARS = 200  # a prompt or a continuation in a table cell, at most


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def _num(x: Any, fmt: str = ".3g") -> str:
    if x is None:
        return "-"
    if isinstance(x, str):  # report.json writes NaN as "nan"
        return x
    return "nan" if isinstance(x, float) and math.isnan(x) else format(x, fmt)


def _cut(text: str, limit: int = PROMPT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def divergence_text(d: TokenDiff | None) -> str:
    """'step 3: transformers 'cat' (id 17), ONNX Runtime 'dog' (id 21), top-2 margin 0.0012 (a near tie)'."""
    if d is None:
        return "-"
    margin = "" if d.margin is None else f", top-2 margin {_num(d.margin, '.3g')}"
    tie = " (a near tie: within the logits' tolerance, not a failure)" if d.near_tie else ""
    return (
        f"step {d.step}: transformers {d.expected_text!r} (id {d.expected}), ONNX Runtime {d.got_text!r} "
        f"(id {d.got}){margin}{tie}"
    )


def prompt_rows(run: GenerationRun | None) -> list[list[str]]:
    """One row per prompt of a run: both continuations side by side, whether they are the same, where they part."""
    if run is None:
        return []
    return [
        [
            str(p.prompt),
            _cut(p.text),
            _cut(p.reference_text),
            _cut(p.onnx_text),
            "yes" if p.same else ("near tie" if p.divergence is not None and p.divergence.near_tie else "NO"),
            _num(p.max_logits_diff),
            divergence_text(p.divergence),
        ]
        for p in run.prompts
    ]


def run_line(run: GenerationRun) -> str:
    """'one by one: PASS, 3 of 3 prompts identical (100% of the new tokens)' (and the error, when there is one)."""
    same = sum(p.same for p in run.prompts)
    share = "" if run.identical_share is None else f" ({run.identical_share:.0%} of the new tokens)"
    padding = f", {run.padding_side} padding" if run.padding_side else ""
    line = f"{run.mode}{padding}: {_mark(run.ok)}, {same} of {len(run.prompts)} prompts identical{share}"
    return line + (f"; {run.error}" if run.error else "")


def first_divergences(info: GenerationInfo) -> list[str]:
    """Every run's first differing prompt: 'batched, prompt 2, step 3: ...'."""
    out = []
    for run in info.runs:
        first: PromptResult | None = next((p for p in run.prompts if p.divergence is not None), None)
        if first is not None:
            out.append(f"{run.mode}, prompt {first.prompt}, {divergence_text(first.divergence)}")
    return out


def probe_rows(info: GenerationInfo | None) -> list[list[str]]:
    if info is None:
        return []
    return [
        [
            str(p.get("batch")),
            str(p.get("sequence")),
            str(p.get("past")),
            _mark(bool(p.get("ok"))),
            _num(p.get("max_abs_diff")),
            str(p.get("error") or ""),
        ]
        for p in info.probes
    ]


def speed_rows(speed: list[GenerationSpeed]) -> list[list[str]]:
    """One row per engine and batch size; a measurement that could not run shows why, never a number."""
    rows = []
    for s in speed:
        provider = s.provider + (" + IO binding" if s.io_binding else "")
        if s.error:
            rows.append(
                [s.engine, provider, str(s.batch), _num(s.sequence), "-", "-", "-", "-", f"unavailable: {s.error}"]
            )
            continue
        rows.append(
            [
                s.engine,
                provider,
                str(s.batch),
                _num(s.sequence),
                str(s.new_tokens),
                _num(s.ttft_ms, ".2f"),
                _num(s.tokens_per_s, ".1f"),
                _num(s.threads),
                s.note or "",
            ]
        )
    return rows


def speed_line(speed: list[GenerationSpeed]) -> str:
    """ONNX Runtime CPU against PyTorch at batch 1, e.g. 'batch 1: ONNX Runtime 3717 tokens/s, PyTorch 26 (143x)'."""
    one = [s for s in speed if s.batch == 1 and s.tokens_per_s and not s.error]
    ort = next((s for s in one if s.engine == "onnxruntime" and s.provider == "CPUExecutionProvider"), None)
    torch = next((s for s in one if s.engine == "torch"), None)
    if ort is None or ort.tokens_per_s is None:
        return ""
    line = (
        f"batch 1: ONNX Runtime CPU {ort.tokens_per_s:.0f} tokens/s, time to first token {_num(ort.ttft_ms, '.1f')} ms"
    )
    if torch is not None and torch.tokens_per_s:
        line += f"; PyTorch {torch.tokens_per_s:.0f} tokens/s ({ort.tokens_per_s / torch.tokens_per_s:.2f}x)"
    return line


def variant_rows(info: GenerationInfo | None) -> list[list[str]]:
    if info is None:
        return []
    rows = []
    for v in info.variants:
        first = v.get("first_divergence")
        where = (
            "-"
            if not first
            else f"prompt {first.get('prompt')}, step {first.get('step')}: {first.get('expected')} vs {first.get('got')}"
            + (f", margin {_num(first.get('margin'))}" if first.get("margin") is not None else "")
        )
        share = v.get("identical_share")
        rows.append(
            [
                str(v.get("name")),
                _mark(bool(v.get("ok"))),
                "-" if share is None else f"{share:.1%}",
                where,
                str(v.get("error") or v.get("rule") or ""),
            ]
        )
    return rows


def io_summary(names: list[str]) -> str:
    """A file's input and output names with the per-layer cache names folded: 'past_key_values.{0..11}.key'."""
    folded: dict[str, list[int]] = {}
    order: list[str] = []
    for n in names:
        parts = n.split(".")
        if len(parts) >= 3 and parts[1].isdigit():
            key = ".".join([parts[0], "{i}", *parts[2:]])
            if key not in folded:
                folded[key], order = [], order + [key]
            folded[key].append(int(parts[1]))
        else:
            order.append(n)
    out = []
    for n in order:
        layers = folded.get(n)
        out.append(n if layers is None else n.replace("{i}", f"{{{min(layers)}..{max(layers)}}}"))
    return ", ".join(out)
