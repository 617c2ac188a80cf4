"""Judge an exported decoder by generating: transformers' `generate` against ONNX Runtime through the file.

    check_generation(module, tokenizer, files, prompts, max_new_tokens=20, atol=1e-4, rtol=1e-3,
                     ort_generator=None, probes=True) -> (runs, probes)

- `runs`: two `studio.report.model.GenerationRun`s, "one by one" (each prompt alone) and "batched" (all prompts at
  once, left-padded). The verdict of a run is the same new token ids on every prompt. At a prompt's first differing
  token the `TokenDiff` names the prompt, the step, both tokens (ids and decoded text) and the reference's top-1
  minus top-2 logit margin at that step. When the margin is within the logits' tolerance (atol + rtol * |top-1|)
  and the ONNX token is one of the tied ones, it is a near tie: reported, not failed. Any other difference fails.
  `max_logits_diff` is the largest |difference| of the per-step logits up to and including the first differing
  step (after it the two engines continue different texts); a NaN on either side gives NaN, never a number.
- `probes`: the file's logits and presents against the PyTorch module's own forward with a transformers
  DynamicCache holding the same past, over batch, sequence and past length (0, short, and longer than the sample):
  a list of {batch, sequence, past, max_abs_diff, ok} (ok: every element within atol + rtol * |reference|).

`compare_steps(reference, onnx, ...)` is the comparison alone (any two Steps of the same prompts), for variants;
`step_feeds(generator, prompt_ids, prompt_mask, reference_ids, step)` the file's inputs for the step where a prompt
first diverged (past 0, the prompt and the reference's tokens before that step), for the divergence locator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from studio.errors import StudioError, first_line
from studio.generate.base import GeneratorFiles, Steps
from studio.generate.decoder import cache_tensors, float_dtype, make_cache
from studio.generate.ort_decoder import OrtDecoder
from studio.generate.reference import encode, reference_steps, special_tokens
from studio.report.model import GenerationRun, PromptResult, TokenDiff

ONE_BY_ONE, BATCHED = "one by one", "batched"


@dataclass
class Timed:
    """One decode pair of the check, timed: both engines' Steps.seconds_first / seconds_total and how many new
    tokens each decoded, for the speed rows (studio.generate.speed.speed_from_check)."""

    mode: str  # ONE_BY_ONE | BATCHED
    batch: int
    sequence: int  # the prompt's tokens (the longest, padding included)
    reference_first: float | None
    reference_total: float | None
    reference_tokens: int
    onnx_first: float | None
    onnx_total: float | None
    onnx_tokens: int
    reference_shared: bool = False  # the PyTorch decode ran beside other work (the export's, in a thread)


def timed(mode: str, ids: np.ndarray, ref: Steps, got: Steps) -> Timed:
    return Timed(
        mode, int(ids.shape[0]), int(ids.shape[1]), ref.seconds_first, ref.seconds_total, int(ref.ids.shape[1]),
        got.seconds_first, got.seconds_total, int(got.ids.shape[1]),
    )  # fmt: skip


TEXT_CHARS = 200  # a prompt's text in the report, at most


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b|; NaN when either holds a NaN (or the shapes differ), never a smaller number in its place."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return math.nan
    if a.size == 0:
        return 0.0
    if np.isnan(a).any() or np.isnan(b).any():
        return math.nan
    with np.errstate(invalid="ignore"):  # inf - inf: equal infinities are no difference
        d = np.where(a == b, 0.0, np.abs(a - b))
    return float(d.max())


def within(got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> bool:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return got.shape == want.shape and bool(np.allclose(got, want, atol=atol, rtol=rtol, equal_nan=False))


def margin_at(logits: np.ndarray) -> float:
    """top-1 minus top-2 of one row of logits (NaN when it holds a NaN or has fewer than two entries)."""
    row = np.asarray(logits, dtype=np.float64).ravel()
    if row.size < 2 or np.isnan(row).any():
        return math.nan
    top2 = np.partition(row, -2)[-2:]
    return float(top2[1] - top2[0])


def _decode(decode: Callable[[list[int]], str] | None, ids: list[int]) -> str:
    if decode is None:
        return ""
    try:
        return str(decode(ids))
    except Exception as e:  # noqa: BLE001 - a token the tokenizer cannot decode is shown as such, not a crash
        return f"<cannot decode: {first_line(e, 80)}>"


def divergence_at(
    prompt: int,
    step: int,
    ref_row: list[int],
    got_row: list[int],
    ref_logits: np.ndarray | None,
    atol: float,
    rtol: float,
    decode: Callable[[list[int]], str] | None = None,
) -> TokenDiff:
    """The TokenDiff at `step` (the first differing one); `ref_logits` is the reference's [vocab] row there."""
    expected = ref_row[step] if step < len(ref_row) else -1  # -1: that engine ended (EOS) before this step
    got = got_row[step] if step < len(got_row) else -1
    margin, near = None, False
    if ref_logits is not None:
        row = np.asarray(ref_logits, dtype=np.float64).ravel()
        margin = margin_at(row)
        if not math.isnan(margin) and 0 <= got < row.size and expected >= 0:
            top = float(row.max())
            near = bool(top - row[got] <= atol + rtol * abs(top))
    return TokenDiff(
        prompt=prompt,
        step=step,
        expected=int(expected),
        got=int(got),
        expected_text=_decode(decode, [expected]) if expected >= 0 else "<end>",
        got_text=_decode(decode, [got]) if got >= 0 else "<end>",
        margin=margin,
        near_tie=near,
    )


def compare_row(
    reference: Steps,
    onnx: Steps,
    row: int,
    prompt: int,
    text: str,
    atol: float,
    rtol: float,
    decode: Callable[[list[int]], str] | None = None,
) -> PromptResult:
    """Row `row` of both decodes (prompt number `prompt` of the sample) compared."""
    ref = [int(t) for t in reference.ids[row, : reference.lengths[row]]]
    got = [int(t) for t in onnx.ids[row, : onnx.lengths[row]]]
    first = next((t for t in range(max(len(ref), len(got))) if t >= min(len(ref), len(got)) or ref[t] != got[t]), None)
    last = min(len(ref), len(got)) - 1 if first is None else first
    diffs = [
        max_abs_diff(reference.logits[t][row], onnx.logits[t][row])
        for t in range(last + 1)
        if t < len(reference.logits) and t < len(onnx.logits)
    ]
    worst = None if not diffs else (math.nan if any(math.isnan(d) for d in diffs) else max(diffs))
    div = None
    if first is not None:
        ref_logits = reference.logits[first][row] if first < len(reference.logits) else None
        div = divergence_at(prompt, first, ref, got, ref_logits, atol, rtol, decode)
    return PromptResult(
        prompt=prompt,
        text=text[:TEXT_CHARS],
        reference_ids=ref,
        onnx_ids=got,
        reference_text=_decode(decode, ref),
        onnx_text=_decode(decode, got),
        same=first is None,
        max_logits_diff=worst,
        divergence=div,
    )


def run_verdict(mode: str, prompts: list[PromptResult], padding_side: str | None = None) -> GenerationRun:
    """Same tokens on every prompt, or a near tie where they differ."""
    total = sum(len(p.reference_ids) for p in prompts)
    same = sum(sum(1 for a, b in zip(p.reference_ids, p.onnx_ids) if a == b) for p in prompts)
    ok = all(p.same or (p.divergence is not None and p.divergence.near_tie) for p in prompts)
    return GenerationRun(
        mode=mode,
        ok=ok,
        prompts=prompts,
        padding_side=padding_side,
        identical_share=(same / total) if total else None,
    )


def compare_steps(
    reference: Steps,
    onnx: Steps,
    texts: Sequence[str],
    mode: str,
    atol: float,
    rtol: float,
    decode: Callable[[list[int]], str] | None = None,
    prompt_ids: Sequence[int] | None = None,
    padding_side: str | None = None,
) -> GenerationRun:
    """One batch's two decodes compared row by row (row b is prompt `prompt_ids[b]`, default b)."""
    numbers = list(prompt_ids) if prompt_ids is not None else list(range(len(texts)))
    rows = [compare_row(reference, onnx, b, numbers[b], texts[b], atol, rtol, decode) for b in range(len(texts))]
    return run_verdict(mode, rows, padding_side)


def _generate_runs(
    module: Any,
    tokenizer: Any,
    generator: Any,
    prompts: list[str],
    max_new_tokens: int,
    atol: float,
    rtol: float,
    timings: list[Timed] | None = None,
    references: dict[str, list[Steps]] | None = None,
) -> list[GenerationRun]:
    eos, pad = special_tokens(module, tokenizer)
    done = references or {}

    def decode(ids: list[int]) -> str:
        return str(tokenizer.decode(ids))

    runs = []
    rows: list[PromptResult] = []
    try:
        for i, text in enumerate(prompts):
            ids, mask = encode(tokenizer, [text], pad)
            known = done.get(ONE_BY_ONE) or []
            ref = known[i] if i < len(known) else reference_steps(module, ids, mask, max_new_tokens, eos, pad)
            got = generator.greedy(ids, mask, max_new_tokens)
            if timings is not None:
                timings.append(timed(ONE_BY_ONE, ids, ref, got))
            rows.append(compare_row(ref, got, 0, i, text, atol, rtol, decode))
        runs.append(run_verdict(ONE_BY_ONE, rows))
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - ONNX Runtime's errors derive from Exception only: the run says why
        runs.append(GenerationRun(ONE_BY_ONE, ok=False, prompts=rows, error=first_line(e, with_type=True)))
    if len(prompts) > 1:
        try:
            ids, mask = encode(tokenizer, prompts, pad)
            known = done.get(BATCHED) or []
            ref = known[0] if known else reference_steps(module, ids, mask, max_new_tokens, eos, pad)
            got = generator.greedy(ids, mask, max_new_tokens)
            if timings is not None:
                timings.append(timed(BATCHED, ids, ref, got))
            runs.append(compare_steps(ref, got, prompts, BATCHED, atol, rtol, decode, padding_side="left"))
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - as above
            runs.append(GenerationRun(BATCHED, ok=False, padding_side="left", error=first_line(e, with_type=True)))
    return runs


def reference_decodes(
    module: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    into: dict[str, list[Steps]],
    before: Callable[[], object] | None = None,
) -> dict[str, list[Steps]]:
    """transformers' Steps of the check (every prompt alone, then all together when several), appended to `into`
    as they are done (so a thread's partial work is kept; check_generation decodes what is missing). `before`:
    called before each decode."""
    prompts = [str(p) for p in prompts]
    eos, pad = special_tokens(module, tokenizer)
    ones = into.setdefault(ONE_BY_ONE, [])
    for text in prompts[len(ones) :]:
        ids, mask = encode(tokenizer, [text], pad)
        if before is not None:
            before()
        ones.append(reference_steps(module, ids, mask, max_new_tokens, eos, pad))
    if len(prompts) > 1 and not into.get(BATCHED):
        ids, mask = encode(tokenizer, prompts, pad)
        if before is not None:
            before()
        into[BATCHED] = [reference_steps(module, ids, mask, max_new_tokens, eos, pad)]
    return into


def step_feeds(
    generator: OrtDecoder, prompt_ids: np.ndarray, prompt_mask: np.ndarray, reference_ids: Sequence[int], step: int
) -> dict[str, np.ndarray]:
    """The inputs of one forward of the file (past length 0) whose last position's logits are those of `step`:
    the prompt (one row) followed by the reference's first `step` new tokens. For the divergence locator, to run
    on the step where the tokens first differ; the file's input order."""
    ids = np.concatenate(
        [np.asarray(prompt_ids, np.int64).reshape(1, -1), np.asarray([reference_ids[:step]], np.int64)], 1
    )
    mask = np.concatenate([np.asarray(prompt_mask, np.int64).reshape(1, -1), np.ones((1, step), np.int64)], 1)
    from studio.generate.ort_decoder import position_ids

    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids(mask), **generator.empty_past(1)}
    return {n: feeds[n] for n in generator.inputs}


def probe_sizes(sample_tokens: int, max_positions: int | None) -> list[tuple[int, int, int]]:
    """(batch, sequence, past): past 0 (a prefill), short, and longer than the sample (its longest prompt plus
    the new tokens), kept within the model's positions."""
    long_past = sample_tokens + 8
    sizes = [(1, 4, 0), (2, 5, 0), (2, 1, 3), (3, 2, 5), (2, 1, long_past), (1, 3, long_past)]
    if max_positions:
        sizes = [(b, s, min(p, max_positions - s)) for b, s, p in sizes]
    return sizes


def probe_shapes(
    module: Any,
    generator: OrtDecoder,
    sizes: Sequence[tuple[int, int, int]],
    atol: float,
    rtol: float,
    vocab: int,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The file's logits and presents against the module's forward with a DynamicCache of the same random past."""
    g = torch.Generator().manual_seed(seed)
    results: list[dict[str, Any]] = []
    past_shapes = generator.empty_past(1)
    dtype = float_dtype(module)
    for batch, seq, past in sizes:
        try:
            ids = torch.randint(0, max(2, vocab), (batch, seq), generator=g)
            mask = torch.ones(batch, past + seq, dtype=torch.long)
            pos = torch.arange(past, past + seq).unsqueeze(0).expand(batch, seq)
            pasts = []
            for name in generator.past_inputs:
                shape = list(past_shapes[name].shape)
                pasts.append(torch.randn([batch, shape[1], past, shape[3]], generator=g).to(dtype))
            kwargs = {"position_ids": pos} if generator.takes_positions else {}
            with torch.no_grad():
                out = module(input_ids=ids, attention_mask=mask, cache=make_cache(pasts), use_cache=True, **kwargs)
            want = [out.logits.float().numpy()] + [t.float().numpy() for t in cache_tensors(out.cache)]
            feeds: dict[str, np.ndarray] = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
            feeds["position_ids"] = pos.numpy().astype(np.int64)
            feeds.update({n: p.numpy().astype(generator.dtype) for n, p in zip(generator.past_inputs, pasts)})
            got_d = generator.step(feeds)
            got = [got_d["logits"]] + [got_d["present." + n[len("past_key_values.") :]] for n in generator.past_inputs]
            diffs = [max_abs_diff(a, b) for a, b in zip(got, want)]
            worst = math.nan if any(math.isnan(d) for d in diffs) else max(diffs)
            ok = len(got) == len(want) and all(within(a, b, atol, rtol) for a, b in zip(got, want))
            results.append(dict(batch=batch, sequence=seq, past=past, max_abs_diff=worst, ok=ok))
        except Exception as e:  # noqa: BLE001 - a size the file cannot run is a failed probe, with the reason
            results.append(
                dict(batch=batch, sequence=seq, past=past, max_abs_diff=math.nan, ok=False, error=first_line(e))
            )
    return results


def check_generation(
    module: Any,
    tokenizer: Any,
    files: GeneratorFiles,
    prompts: Sequence[str],
    max_new_tokens: int = 20,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    ort_generator: OrtDecoder | None = None,
    probes: bool = True,
    timings: list[Timed] | None = None,
    references: dict[str, list[Steps]] | None = None,
) -> tuple[list[GenerationRun], list[dict[str, Any]]]:
    """Generate the prompts with transformers and with ONNX Runtime through `files`; probe the file's shapes.
    See the module's docstring for what each result holds. `timings`: each decode pair's Timed is appended
    (the speed rows are these decodes). `references`: transformers' Steps already decoded for these prompts
    (reference_decodes, e.g. run beside the export): {ONE_BY_ONE: one per prompt, BATCHED: [one]}; what is
    missing is decoded here."""
    prompts = [str(p) for p in prompts]
    if not prompts:
        raise StudioError("no prompt to generate from", hint="the sample's text column is empty")
    eos, pad = special_tokens(module, tokenizer)
    generator = ort_generator or OrtDecoder(files, eos_token_id=eos, pad_token_id=pad)
    module.eval()
    runs = _generate_runs(module, tokenizer, generator, prompts, max_new_tokens, atol, rtol, timings, references)
    found: list[dict[str, Any]] = []
    if probes and generator.with_past:
        longest = max(int(encode(tokenizer, [p], pad)[0].shape[1]) for p in prompts) + max_new_tokens
        config = module.config.get_text_config(decoder=True)
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        vocab = int(getattr(config, "vocab_size", 2))
        found = probe_shapes(module, generator, probe_sizes(longest, limit), atol, rtol, vocab)
    return runs, found
