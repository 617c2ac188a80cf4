"""Judge an exported encoder-decoder by generating: transformers' `generate` against ONNX Runtime through the files.

    check_seq2seq(module, tokenizer, files, prompts, max_new_tokens=20, atol=1e-4, rtol=1e-3,
                  ort_generator=None, probes=True) -> (runs, probes)

The encoder-decoder counterpart of studio.generate.verify.check_generation, with the same results and the same
verdict (verify.compare_row / compare_steps / run_verdict judge the two `Steps`):

- `runs`: "one by one" (each prompt alone, no padding) and "batched" (all prompts at once, right-padded on the
  encoder side, `padding_side="right"`), transformers' greedy `generate` (`reference_seq2seq`: a plain greedy
  GenerationConfig from the model's decoder start token, its raw logits) against `OrtSeq2Seq.greedy`;
- `probes`: the files against the module's own uncached forward over batch, encoder sequence and past length
  (0, short, longer than the sample): the encoder's hidden states, the first step's logits over a decoder prefix
  of `past` tokens, then one step of decoder_with_past_model.onnx on that cache, each against
  `module(..., use_cache=False)` on the whole decoder sequence. A list of {batch, sequence, past, max_abs_diff, ok}
  (`sequence` is the encoder's length); ok: each tensor's max |difference| within atol + rtol * its max |value|
  (`close`).

What the reference differs in from studio.generate.reference (whose reference_steps is for decoders): generate
returns the decoder's sequences ([decoder start, t1, t2, ...]), so the new tokens are everything after the first,
and prompts are padded on the right.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from studio.errors import StudioError, first_line
from studio.generate.base import GeneratorFiles, Steps
from studio.generate.ort_seq2seq import OrtSeq2Seq
from studio.generate.reference import lengths_of, special_tokens
from studio.generate.verify import BATCHED, ONE_BY_ONE, compare_row, compare_steps, max_abs_diff, run_verdict
from studio.report.model import GenerationRun, PromptResult

RIGHT = "right"


@contextlib.contextmanager
def _right_padding(tokenizer: Any, pad_token_id: int) -> Iterator[Any]:
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = RIGHT
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_token_id)
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = pad


def encode_right(tokenizer: Any, prompts: Sequence[str], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The prompts as int64 (input_ids, attention_mask), right-padded to the longest; a prompt that gives no token
    is an error naming it."""
    prompts = list(prompts)
    with _right_padding(tokenizer, pad_token_id) as tok:
        enc = tok(prompts, padding=True, return_tensors="np")
    ids, mask = np.asarray(enc["input_ids"], dtype=np.int64), np.asarray(enc["attention_mask"], dtype=np.int64)
    for i, row in enumerate(mask):
        if ids.shape[1] == 0 or not row.any():
            raise StudioError(f"prompt {i} ({prompts[i][:60]!r}) gives no token: there is nothing to encode")
    return ids, mask


def decoder_start(module: Any) -> int:
    """The token generate starts every decoded sequence with (the generation config's, else config.json's)."""
    for source in (getattr(module, "generation_config", None), getattr(module, "config", None)):
        start = getattr(source, "decoder_start_token_id", None) if source is not None else None
        if isinstance(start, (list, tuple)):
            start = start[0] if start else None
        if start is not None:
            return int(start)
    raise StudioError(f"{type(module).__name__} names no decoder_start_token_id (generation_config, config.json)")


def reference_seq2seq(
    module: Any,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    max_new_tokens: int,
    eos_token_id: int | list[int] | None,
    pad_token_id: int,
    decoder_start_token_id: int | None = None,
) -> Steps:
    """transformers' greedy decode of the (right-padded) prompts through the encoder-decoder, with the raw logits
    of every step: a plain greedy GenerationConfig (the model's score-changing settings -- forced BOS / EOS,
    no_repeat_ngram_size, bad_words_ids, ... -- left out: the comparison is of what the files compute)."""
    from transformers import GenerationConfig

    start = decoder_start(module) if decoder_start_token_id is None else int(decoder_start_token_id)
    gen = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        decoder_start_token_id=start,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
        output_logits=True,
        return_dict_in_generate=True,
        use_cache=True,
    )
    ids = torch.from_numpy(np.asarray(input_ids, dtype=np.int64))
    mask = torch.from_numpy(np.asarray(attention_mask, dtype=np.int64))
    was = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            started = time.perf_counter()
            out = module.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
            total = time.perf_counter() - started
    finally:
        module.train(was)
    new = out.sequences[:, 1:].cpu().numpy().astype(np.int64)  # after the decoder start token
    logits = [s.detach().float().cpu().numpy() for s in out.logits]
    eos = set() if eos_token_id is None else ({eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id))
    return Steps(ids=new, logits=logits, lengths=lengths_of(new, eos), seconds_total=total)


def generate_runs(
    module: Any,
    tokenizer: Any,
    generator: OrtSeq2Seq,
    prompts: list[str],
    max_new_tokens: int,
    atol: float,
    rtol: float,
) -> list[GenerationRun]:
    """The "one by one" and (several prompts) "batched" runs, each judged by studio.generate.verify."""
    eos, pad = special_tokens(module, tokenizer)
    start = generator.start

    def decode(ids: list[int]) -> str:
        return str(tokenizer.decode(ids))

    runs = []
    rows: list[PromptResult] = []
    try:
        for i, text in enumerate(prompts):
            ids, mask = encode_right(tokenizer, [text], pad)
            ref = reference_seq2seq(module, ids, mask, max_new_tokens, eos, pad, start)
            got = generator.greedy(ids, mask, max_new_tokens)
            rows.append(compare_row(ref, got, 0, i, text, atol, rtol, decode))
        runs.append(run_verdict(ONE_BY_ONE, rows))
    except (StudioError, RuntimeError, ValueError) as e:
        runs.append(GenerationRun(ONE_BY_ONE, ok=False, prompts=rows, error=first_line(e, with_type=True)))
    if len(prompts) > 1:
        try:
            ids, mask = encode_right(tokenizer, prompts, pad)
            ref = reference_seq2seq(module, ids, mask, max_new_tokens, eos, pad, start)
            got = generator.greedy(ids, mask, max_new_tokens)
            runs.append(compare_steps(ref, got, prompts, BATCHED, atol, rtol, decode, padding_side=RIGHT))
        except (StudioError, RuntimeError, ValueError) as e:
            runs.append(GenerationRun(BATCHED, ok=False, padding_side=RIGHT, error=first_line(e, with_type=True)))
    return runs


def probe_sizes(sample_tokens: int, longest_new: int, max_positions: int | None) -> list[tuple[int, int, int]]:
    """(batch, encoder sequence, past): a one-token input with one past step, past 0 (the first step alone), short,
    and longer than the sample's decode (its new tokens plus 8), the encoder up to the sample's longest prompt plus
    8, within the positions."""
    long_past = longest_new + 8
    long_seq = sample_tokens + 8
    sizes = [(1, 1, 1), (1, 4, 0), (2, 5, 0), (2, 3, 3), (3, long_seq, 5), (2, 6, long_past), (1, long_seq, long_past)]
    if max_positions:
        sizes = [(b, min(s, max_positions), min(p, max_positions - 1)) for b, s, p in sizes]
    return sizes


def close(got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> bool:
    """max |got - want| <= atol + rtol * max |want|: float32 error grows with the tensor's scale, so an element
    near zero in a row of large logits is held to that row's scale, not to its own (elementwise allclose fails
    such elements on float noise alone). A NaN on either side, or other shapes, is never close."""
    d = max_abs_diff(got, want)
    if math.isnan(d):
        return False
    scale = float(np.abs(np.asarray(want, dtype=np.float64)).max()) if np.size(want) else 0.0
    return d <= atol + rtol * scale


def _probe_one(
    module: Any,
    generator: OrtSeq2Seq,
    size: tuple[int, int, int],
    vocab: int,
    tol: tuple[float, float],
    g: torch.Generator,
) -> dict[str, Any]:
    """One probe: encoder, first step over `past` decoder tokens (one at past 0), one cached step after them."""
    batch, seq, past = size
    low = min(4, vocab - 1)
    ids = torch.randint(low, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if batch > 1 and seq > 2:
        mask[-1, seq - 2 :] = 0  # the last row right-padded
    decoded = torch.randint(low, vocab, (batch, past + 1), generator=g)
    decoded[:, 0] = generator.start
    with torch.no_grad():
        hidden = module.get_encoder()(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state
        want = module(
            attention_mask=mask, decoder_input_ids=decoded, encoder_outputs=(hidden,), use_cache=False
        ).logits.float()
    m = mask.numpy()
    got_hidden = generator.encode(ids.numpy(), m)
    pairs = [(got_hidden, hidden.float().numpy())]
    first_len = max(past, 1)
    dec = generator.sessions["decoder"]
    out = dec.run(
        None,
        {"encoder_attention_mask": m, "input_ids": decoded[:, :first_len].numpy(), "encoder_hidden_states": got_hidden},
    )
    pairs.append((out[0], want[:, :first_len].numpy()))
    if past > 0 and generator.with_past:
        names = [o.name for o in dec.get_outputs()][1:]
        cache = {n.replace("present.", "past_key_values.", 1): v for n, v in zip(names, out[1:])}
        feed = {"encoder_attention_mask": m, "input_ids": decoded[:, past : past + 1].numpy()}
        feed.update({n: cache[n] for n in generator.past_inputs})
        step = generator.sessions["decoder_with_past"].run(["logits"], feed)[0]
        pairs.append((step, want[:, past : past + 1].numpy()))
    diffs = [max_abs_diff(a, b) for a, b in pairs]
    worst = math.nan if any(math.isnan(d) for d in diffs) else max(diffs)
    ok = all(close(a, b, tol[0], tol[1]) for a, b in pairs)
    return dict(batch=batch, sequence=seq, past=past, max_abs_diff=worst, ok=ok)


def probe_shapes(
    module: Any,
    generator: OrtSeq2Seq,
    sizes: Sequence[tuple[int, int, int]],
    atol: float,
    rtol: float,
    vocab: int,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The files against the module's uncached forward at each (batch, encoder sequence, past) size."""
    g = torch.Generator().manual_seed(seed)
    results = []
    for batch, seq, past in sizes:
        try:
            results.append(_probe_one(module, generator, (batch, seq, past), max(vocab, 8), (atol, rtol), g))
        except Exception as e:  # noqa: BLE001 - a size the files cannot run is a failed probe, with the reason
            results.append(
                dict(batch=batch, sequence=seq, past=past, max_abs_diff=math.nan, ok=False, error=first_line(e))
            )
    return results


def check_seq2seq(
    module: Any,
    tokenizer: Any,
    files: GeneratorFiles,
    prompts: Sequence[str],
    max_new_tokens: int = 20,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    ort_generator: OrtSeq2Seq | None = None,
    probes: bool = True,
) -> tuple[list[GenerationRun], list[dict[str, Any]]]:
    """Generate the prompts with transformers and with ONNX Runtime through `files`; probe the files' shapes.
    See the module's docstring for what each result holds."""
    prompts = [str(p) for p in prompts]
    if not prompts:
        raise StudioError("no prompt to generate from", hint="the sample's text column is empty")
    eos, pad = special_tokens(module, tokenizer)
    generator = ort_generator or OrtSeq2Seq(files, eos_token_id=eos, pad_token_id=pad)
    module.eval()
    runs = generate_runs(module, tokenizer, generator, prompts, max_new_tokens, atol, rtol)
    found: list[dict[str, Any]] = []
    if probes:
        longest = max(int(encode_right(tokenizer, [p], pad)[0].shape[1]) for p in prompts)
        config = module.config
        limit = getattr(config, "max_position_embeddings", None)
        found = probe_shapes(module, generator, probe_sizes(longest, max_new_tokens, limit), atol, rtol,
                             int(getattr(config, "vocab_size", 8)))  # fmt: skip
    return runs, found
