"""The divergence locator (studio.checks.locate) on the generation step where a decoder's tokens first part.

    for_generation(spec, loaded, files, generator, runs, prompts, pad) -> report.json's `divergence` dict, or None

When a generation run has a real divergence (a token differs and it is not a near tie), or when `--locate` asks
(ConvertSpec.locate), the locator runs model.onnx once on that step: `studio.generate.verify.step_feeds` (past
length 0, the prompt and the reference's tokens before the step, so the last position's logits are the diverging
step's) against the PyTorch model's own forward on the same tokens, through the wrapper the file was exported from
(studio.generate.decoder.DecoderWithPast: the inputs in the file's order, the model held as `self.model`): the scope
names of the file's nodes (`/model/...`, or the new exporter's module metadata) are its module paths, so every node
is tied to the module call it came from.

Which step: the first real divergence of the one-by-one run, else of the batched run (that row's prompt fed alone,
without padding), else a near tie's step when `--locate` asks, else (--locate, every token the same) the last step
of prompt 0. The result is the classifier's `Divergence` with `generation_step` = {run, prompt, step, expected, got,
margin, near_tie} and its message prefixed by the step, so report.md and the CLI say where it ran. Encoder-decoders:
the locator covers decoders only (model.onnx); the result says so instead of locating. The locator's own failure
never changes the verdict: the Divergence says what failed.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from studio.errors import first_line
from studio.generate.base import TEXT_GENERATION, GeneratorFiles
from studio.generate.decoder import DecoderWithPast
from studio.report.divergence import Divergence
from studio.report.model import GenerationRun, PromptResult, TokenDiff
from studio.sources.base import LoadedModel

ENCODER_DECODER = (
    "the divergence locator covers decoders (model.onnx) only: an encoder-decoder's files "
    "(encoder_model.onnx, decoder_model.onnx, decoder_with_past_model.onnx) are judged by generating, "
    "not located node by node"
)


def pick_step(runs: list[GenerationRun], requested: bool) -> tuple[str, PromptResult, TokenDiff | None] | None:
    """(run mode, prompt, its TokenDiff) to locate: the first real divergence (one by one first), else when
    `requested` a near tie, else prompt 0 of the first run with prompts (TokenDiff None: its last step)."""
    ordered = sorted(runs, key=lambda r: r.mode != "one by one")
    for real in (True, False):
        for run in ordered:
            for p in run.prompts:
                d = p.divergence
                if d is not None and (not d.near_tie) == real and (real or requested):
                    return run.mode, p, d
    if requested:
        for run in ordered:
            if run.prompts and run.prompts[0].reference_ids:
                return run.mode, run.prompts[0], None
    return None


def for_generation(
    spec: Any,
    loaded: LoadedModel,
    files: GeneratorFiles,
    generator: Any,
    runs: list[GenerationRun],
    prompts: list[str],
    pad: int,
    **budget: Any,
) -> dict[str, Any] | None:
    """report.json's `divergence` for a generator (see the module's text), or None when nothing asks for it.
    `budget`: studio.checks.locate.locate()'s keywords (time_budget_s, max_values, ...)."""
    requested = bool(getattr(spec, "locate", False))
    picked = pick_step(runs, requested)
    if picked is None:
        return None
    mode, prompt, diff = picked
    step = diff.step if diff is not None else len(prompt.reference_ids) - 1
    step = max(0, min(step, len(prompt.reference_ids)))
    where = {
        "run": mode,
        "prompt": prompt.prompt,
        "step": step,
        "expected": diff.expected if diff else prompt.reference_ids[step],
        "got": diff.got if diff else prompt.onnx_ids[step] if step < len(prompt.onnx_ids) else None,
        "margin": diff.margin if diff else None,
        "near_tie": diff.near_tie if diff else False,
    }
    trigger = "generation" if diff is not None and not diff.near_tie else "requested"
    words = f"generation {mode}, prompt {prompt.prompt}, step {step}"
    if files.task != TEXT_GENERATION:
        div = Divergence(False, "unknown", None, atol=spec.atol, rtol=spec.rtol, stopped=ENCODER_DECODER)
        div.message = f"{words}: {ENCODER_DECODER}"
        return _finish(div, trigger, where)
    started = time.perf_counter()
    try:
        div = locate_step(spec, loaded, files, generator, prompts[prompt.prompt], pad, prompt.reference_ids, step,
                          **budget)  # fmt: skip
    except Exception as e:  # noqa: BLE001 - the generation's verdict stands; the report says the locator failed
        div = Divergence(False, "unknown", None, atol=spec.atol, rtol=spec.rtol, stopped=first_line(e, with_type=True))
        div.seconds = round(time.perf_counter() - started, 2)
        div.message = f"the divergence locator failed: {div.stopped}"
    div.message = f"{words}: {div.message}"
    return _finish(div, trigger, where)


def _finish(div: Divergence, trigger: str, where: dict[str, Any]) -> dict[str, Any]:
    div.trigger = trigger
    margin = where.get("margin")  # a NaN margin is written "nan" in report.json, as the locator's own figures
    div.generation_step = {**where, "margin": str(margin) if isinstance(margin, float) and margin != margin else margin}
    return div.to_dict()


def locate_step(
    spec: Any,
    loaded: LoadedModel,
    files: GeneratorFiles,
    generator: Any,
    text: str,
    pad: int,
    reference_ids: list[int],
    step: int,
    **budget: Any,
) -> Divergence:
    """The locator on model.onnx fed `step_feeds` for `text` (encoded alone, no padding) at `step`."""
    from studio.checks import locate  # its hooks keep every module's outputs: only imported when it runs
    from studio.generate.reference import encode
    from studio.generate.verify import step_feeds

    ids, mask = encode(loaded.tokenizer, [text], pad)
    feeds = step_feeds(generator, ids, mask, reference_ids, step)
    tensors = {n: torch.from_numpy(v) for n, v in feeds.items()}
    path = files.folder / files.files["model"]
    layers = files.cache.layers if files.cache is not None else len(generator.past_inputs) // 2
    wrapper = DecoderWithPast(loaded.module, layers, position_ids=bool(generator.takes_positions))
    return locate.locate(
        loaded, path, tensors, atol=spec.atol, rtol=spec.rtol, threads=getattr(spec, "threads", None),
        wrapper=wrapper, **budget,
    )  # fmt: skip
