"""Greedy decoding through an exported encoder-decoder (studio.generate.seq2seq) with ONNX Runtime.

    OrtSeq2Seq(files).greedy(input_ids, attention_mask, max_new_tokens) -> Steps

What transformers' `generate(do_sample=False)` does for an encoder-decoder, in numpy: the encoder runs once on the
prompts (right-padded, their mask passed along as `encoder_attention_mask` at every step); every sequence starts
from the decoder start token; `decoder_model.onnx` makes the first step and the cache (self- and cross-attention),
then `decoder_with_past_model.onnx` makes one token per step with the self-attention `present.*` fed back as
`past_key_values.{i}.decoder.*` and the first step's cross-attention keys / values as `past_key_values.{i}.encoder.*`.
A sequence that produced EOS is finished: its later tokens are the pad token, as transformers writes (and feeds)
them, and `Steps.lengths` counts its tokens up to and including the EOS; decoding stops when every sequence is
finished. Without `decoder_with_past` (`--no-cache`) the decoder is run on the whole decoded sequence each step.

The decoder start, EOS and pad tokens come from the files' metadata (the export records them), or the arguments.
Sessions come from studio.checks.runtime (cpu_session, or cuda_session where asked); `providers()` is what the
sessions really use.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from studio.checks.runtime import cpu_session, cuda_session
from studio.errors import StudioError
from studio.generate.base import GeneratorFiles, Steps
from studio.generate.seq2seq import read_metadata

ROLES = ("encoder", "decoder", "decoder_with_past")
_FLOATS = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _eos(value: int | Sequence[int] | None) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, (int, np.integer)):
        return {int(value)}
    return {int(v) for v in value}


def open_session(path: Path, device: str = "cpu", threads: int | None = None) -> ort.InferenceSession:
    """A session on the CPU, or on CUDA (an error saying why when CUDA is not really in use)."""
    if device == "cuda":
        cuda = cuda_session(path, threads)
        if cuda.session is None:
            raise StudioError(f"no CUDA session for {path.name}: {cuda.reason}")
        return cuda.session
    return cpu_session(path, threads)


class OrtSeq2Seq:
    """An OrtGenerator (studio.generate.base) for encoder_model.onnx + decoder_model.onnx (+ decoder_with_past)."""

    def __init__(
        self,
        files: GeneratorFiles,
        *,
        decoder_start_token_id: int | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        sessions: dict[str, ort.InferenceSession] | None = None,
        device: str = "cpu",
        threads: int | None = None,
    ):
        self.files = files
        folder = Path(files.folder)
        missing = [r for r in ("encoder", "decoder") if r not in files.files]
        if missing:
            raise StudioError(f"an encoder-decoder export needs the {' and '.join(missing)} file (have: {files.files})")
        given = dict(sessions or {})
        self.sessions: dict[str, ort.InferenceSession] = {
            role: given[role] if role in given else open_session(folder / files.files[role], device, threads)
            for role in ROLES
            if role in files.files
        }
        meta: dict[str, Any] = read_metadata(folder / files.files["decoder"])
        start = decoder_start_token_id if decoder_start_token_id is not None else meta.get("decoder_start_token_id")
        if start is None:
            raise StudioError(
                f"{files.files['decoder']} records no decoder_start_token_id: pass decoder_start_token_id"
            )
        self.start = int(start)
        self.eos = _eos(eos_token_id if eos_token_id is not None else meta.get("eos_token_id"))
        pad = pad_token_id if pad_token_id is not None else meta.get("pad_token_id")
        self.pad = int(pad) if pad is not None else (min(self.eos) if self.eos else 0)
        # float inputs each file takes (an fp16 variant may take float16 where the encoder gave float32)
        self._floats = {
            role: {i.name: _FLOATS[i.type] for i in sess.get_inputs() if i.type in _FLOATS}
            for role, sess in self.sessions.items()
        }
        self.with_past = "decoder_with_past" in self.sessions
        self.past_inputs: list[str] = []
        decoder = self.sessions["decoder"]
        self._present = [o.name for o in decoder.get_outputs() if o.name.startswith("present.")]
        if self.with_past:
            past = self.sessions["decoder_with_past"]
            self.past_inputs = [i.name for i in past.get_inputs() if i.name.startswith("past_key_values.")]
            self._past_out = [o.name for o in past.get_outputs()]

    def providers(self) -> list[str]:
        """The providers the sessions really use, in order, each once (session.get_providers())."""
        seen: list[str] = []
        for s in self.sessions.values():
            for p in s.get_providers():
                if p not in seen:
                    seen.append(p)
        return seen

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """The encoder's last_hidden_state for the prompts."""
        ids, mask = np.asarray(input_ids, np.int64), np.asarray(attention_mask, np.int64)
        return np.asarray(
            self.sessions["encoder"].run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
        )

    def greedy(self, input_ids: np.ndarray, attention_mask: np.ndarray, max_new_tokens: int) -> Steps:
        """Decode up to `max_new_tokens` tokens greedily for a batch of (right-padded) prompts."""
        ids, mask = np.asarray(input_ids, np.int64), np.asarray(attention_mask, np.int64)
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise StudioError(
                f"input_ids {list(ids.shape)} and attention_mask {list(mask.shape)} must be one [batch, sequence]"
            )
        t0 = time.perf_counter()
        hidden = self.encode(ids, mask)
        batch = ids.shape[0]
        decoded = np.full((batch, 1), self.start, np.int64)
        feed = {"encoder_attention_mask": mask, "input_ids": decoded, "encoder_hidden_states": hidden}
        first = self.sessions["decoder"].run(None, self._typed("decoder", feed))
        logits = np.asarray(first[0][:, -1], np.float32)
        cache = dict(zip(self._present, first[1:]))
        past = {n.replace("present.", "past_key_values.", 1): v for n, v in cache.items()}
        tokens: list[np.ndarray] = []
        steps: list[np.ndarray] = []
        done = np.zeros(batch, bool)
        lengths = [max_new_tokens] * batch
        seconds_first = None
        for t in range(max_new_tokens):
            nxt = logits.argmax(-1).astype(np.int64)
            nxt = np.where(done, self.pad, nxt)
            tokens.append(nxt)
            steps.append(logits)
            if seconds_first is None:
                seconds_first = time.perf_counter() - t0
            for b in range(batch):
                if not done[b] and int(nxt[b]) in self.eos:
                    done[b], lengths[b] = True, t + 1
            if done.all() or t == max_new_tokens - 1:
                break
            decoded = np.concatenate([decoded, nxt[:, None]], axis=1)
            if self.with_past:
                logits, past = self._step_with_past(mask, nxt[:, None], past)
            else:
                feed = {"encoder_attention_mask": mask, "input_ids": decoded, "encoder_hidden_states": hidden}
                out = self.sessions["decoder"].run(["logits"], self._typed("decoder", feed))
                logits = np.asarray(out[0][:, -1], np.float32)
        return Steps(
            ids=np.stack(tokens, axis=1) if tokens else np.zeros((batch, 0), np.int64),
            logits=steps,
            lengths=lengths,
            seconds_first=seconds_first,
            seconds_total=time.perf_counter() - t0,
        )

    def _typed(self, role: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The feed with each float array in the type the file declares for it (a no-op when they agree)."""
        want = self._floats[role]
        return {n: v.astype(want[n]) if n in want and v.dtype != want[n] else v for n, v in feed.items()}

    def _step_with_past(
        self, mask: np.ndarray, token: np.ndarray, past: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        feed = {"encoder_attention_mask": mask, "input_ids": token}
        feed.update((n, past[n]) for n in self.past_inputs)
        out = dict(
            zip(
                self._past_out,
                self.sessions["decoder_with_past"].run(self._past_out, self._typed("decoder_with_past", feed)),
            )
        )
        nxt = dict(past)  # the cross-attention part stays the first step's
        for name, value in out.items():
            if name.startswith("present."):
                nxt[name.replace("present.", "past_key_values.", 1)] = value
        return np.asarray(out["logits"][:, -1], np.float32), nxt
