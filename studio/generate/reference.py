"""The reference: transformers' own `generate` (greedy, its own cache, the model's default attention) -> Steps.

    special_tokens(module, tokenizer) -> (eos_token_id, pad_token_id)
    encode(tokenizer, prompts, pad_token_id) -> (input_ids, attention_mask)   # left-padded when several
    reference_steps(module, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id) -> Steps

`reference_steps` runs `module.generate(do_sample=False, num_beams=1, max_new_tokens=N, output_logits=True,
return_dict_in_generate=True)` with a plain greedy GenerationConfig: the model's own generation_config settings that
change the scores (repetition_penalty, no_repeat_ngram_size, bad_words_ids, ...) are left out, because the exported
file computes logits and the comparison is of what the file computes; the step's token is the argmax of the raw
logits on both sides. The pad token is the EOS token when the tokenizer has none (as transformers does).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from studio.errors import StudioError
from studio.generate.base import Steps
from studio.generate.ort_decoder import eos_ids


def special_tokens(module: Any, tokenizer: Any = None) -> tuple[int | list[int] | None, int]:
    """(eos_token_id, pad_token_id): EOS from the model's generation_config, its config, else the tokenizer; the pad
    token from the tokenizer, else the (first) EOS, else 0."""
    eos = None
    for source in (getattr(module, "generation_config", None), getattr(module, "config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if eos is not None:
            break
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    if pad is None:
        pad = getattr(getattr(module, "generation_config", None), "pad_token_id", None)
    if pad is None:
        ids = eos_ids(eos)
        pad = min(ids) if ids else 0
    return eos, int(pad)


@contextlib.contextmanager
def _left_padding(tokenizer: Any, pad_token_id: int) -> Iterator[Any]:
    """The tokenizer pads on the left with a pad token (the EOS when it has none), its settings restored after."""
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_token_id)
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = pad


def encode(tokenizer: Any, prompts: Sequence[str], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The prompts as int64 (input_ids, attention_mask); several are left-padded to the longest. A prompt that
    gives no token is an error naming it."""
    prompts = list(prompts)
    with _left_padding(tokenizer, pad_token_id) as tok:
        enc = tok(prompts, padding=True, return_tensors="np")
    ids, mask = np.asarray(enc["input_ids"], dtype=np.int64), np.asarray(enc["attention_mask"], dtype=np.int64)
    for i, row in enumerate(mask):
        if ids.shape[1] == 0 or not row.any():
            raise StudioError(f"prompt {i} ({prompts[i][:60]!r}) gives no token: there is nothing to continue")
    return ids, mask


def lengths_of(ids: np.ndarray, eos: set[int]) -> list[int]:
    """How many new tokens count in each row: up to and including the first EOS, else all."""
    out = []
    for row in ids:
        hit = [t for t, tok in enumerate(row.tolist()) if tok in eos]
        out.append(hit[0] + 1 if hit else len(row))
    return out


class FirstToken:
    """A stopping criterion that never stops: it notes when generate produced its first new token (transformers
    calls the criteria once per step, after the step's token is appended)."""

    def __init__(self, firsts: list[float]):
        self.firsts, self.start = firsts, 0.0
        self.seen = False

    def begin(self) -> FirstToken:
        self.start, self.seen = time.perf_counter(), False
        return self

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        if not self.seen:
            self.firsts.append((time.perf_counter() - self.start) * 1000.0)
            self.seen = True
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def reference_steps(
    module: Any,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    max_new_tokens: int,
    eos_token_id: int | list[int] | None,
    pad_token_id: int,
) -> Steps:
    """transformers' greedy decode of the (left-padded) batch, with the raw logits of every step; timed as the
    ONNX Runtime decode is (Steps.seconds_first: the prompt's forward and the first token, noted by a stopping
    criterion that never stops; seconds_total: the whole `generate` call), with torch's threads as they are."""
    from transformers import GenerationConfig, StoppingCriteriaList

    gen = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        min_new_tokens=None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
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
            firsts: list[float] = []
            clock = FirstToken(firsts).begin()
            start = clock.start
            out = module.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=gen,
                stopping_criteria=StoppingCriteriaList([clock]),
            )
            total = time.perf_counter() - start
    finally:
        module.train(was)
    new = out.sequences[:, ids.shape[1] :].cpu().numpy().astype(np.int64)
    logits = [s.detach().float().cpu().numpy() for s in out.logits]
    first = firsts[0] / 1000.0 if firsts else None
    return Steps(
        ids=new, logits=logits, lengths=lengths_of(new, eos_ids(eos_token_id)), seconds_first=first, seconds_total=total
    )


def forward_logits(module: Any, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """The module's plain forward (no cache) logits for one batch, [batch, sequence, vocab] float32."""
    with torch.no_grad():
        out = module(
            input_ids=torch.from_numpy(np.asarray(input_ids, dtype=np.int64)),
            attention_mask=torch.from_numpy(np.asarray(attention_mask, dtype=np.int64)),
            use_cache=False,
        )
    return np.asarray(out.logits.float().numpy())
