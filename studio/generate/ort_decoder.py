"""Greedy decoding through a decoder `model.onnx` with ONNX Runtime, the cache fed back step by step.

    OrtDecoder(files, eos_token_id=..., pad_token_id=...).greedy(input_ids, attention_mask, max_new_tokens) -> Steps

What transformers' `generate(do_sample=False)` does, in numpy: prompts left-padded, `position_ids` from the mask
(cumsum - 1, 1 where the mask is 0), the first step with past length 0, then one token per step with the `present.*`
outputs fed back as `past_key_values.*` and a 1 appended to the mask. A sequence that produced EOS is finished:
its later tokens are the pad token, as transformers writes them, and `Steps.lengths` counts its tokens up to and
including the EOS; decoding stops when every sequence is finished. A file exported without the cache
(`--no-cache`) is run on the whole sequence at every step.

Sessions come from studio.checks.runtime (cpu_session, or cuda_session where asked and available);
`providers()` is what the session really uses. `io_binding=True` keeps the cache on the session's device between
steps (ONNX Runtime's IO binding: under CUDA the presents never come back to the host; only the logits do).
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


def position_ids(attention_mask: np.ndarray) -> np.ndarray:
    """transformers' positions for a (left-)padded batch: cumsum(mask) - 1, and 1 at padded places."""
    pos = np.cumsum(attention_mask, axis=-1) - 1
    return np.where(attention_mask == 0, 1, pos).astype(np.int64)


def eos_ids(eos_token_id: int | Sequence[int] | None) -> set[int]:
    if eos_token_id is None:
        return set()
    if isinstance(eos_token_id, (int, np.integer)):
        return {int(eos_token_id)}
    return {int(t) for t in eos_token_id}


class OrtDecoder:
    """An OrtGenerator (studio.generate.base) for a decoder with or without its cache."""

    def __init__(
        self,
        files: GeneratorFiles,
        *,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        session: ort.InferenceSession | None = None,
        device: str = "cpu",
        threads: int | None = None,
        io_binding: bool = False,
    ):
        self.files = files
        self.eos = eos_ids(eos_token_id)
        self.pad = pad_token_id if pad_token_id is not None else (min(self.eos) if self.eos else 0)
        path = Path(files.folder) / files.files["model"]
        if session is None:
            if device == "cuda":
                cuda = cuda_session(path, threads)
                if cuda.session is None:
                    raise StudioError(f"no CUDA session for {path.name}: {cuda.reason}")
                session = cuda.session
            else:
                session = cpu_session(path, threads)
        self.session = session
        self.inputs = [i.name for i in session.get_inputs()]
        self.outputs = [o.name for o in session.get_outputs()]
        self.past_inputs = [n for n in self.inputs if n.startswith("past_key_values.")]
        self.with_past = bool(self.past_inputs)
        self.takes_positions = "position_ids" in self.inputs
        self.dtype = np.float16 if self._past_type() == "tensor(float16)" else np.float32
        self._past_shapes = {i.name: i.shape for i in session.get_inputs() if i.name in self.past_inputs}
        # IO binding: the presents stay where the session computed them (on the GPU under CUDA) and go back in as
        # the next step's past without a copy to the host; only the logits are copied out
        self.io_binding = io_binding
        self.device_type = "cuda" if self.providers()[:1] == ["CUDAExecutionProvider"] else "cpu"

    def _past_type(self) -> str:
        for i in self.session.get_inputs():
            if i.name.startswith("past_key_values."):
                return str(i.type)
        return "tensor(float)"

    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        """Past length 0: [batch, kv_heads, 0, head_dim] for every past input, the sizes read from the graph."""
        out = {}
        for name, shape in self._past_shapes.items():
            dims = [batch if k == 0 else (0 if k == 2 else d) for k, d in enumerate(shape)]
            if not all(isinstance(d, int) for d in dims):
                raise StudioError(f"{name}: its shape {shape} names no fixed kv heads / head dim")
            out[name] = np.zeros(dims, dtype=self.dtype)
        return out

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One forward of the file: `feeds` by input name -> outputs by name."""
        values = self.session.run(self.outputs, {n: feeds[n] for n in self.inputs})
        return dict(zip(self.outputs, values))

    def bound_step(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """One forward through IO binding: numpy inputs are copied in, OrtValues (the previous presents) bound as
        they are; every output is an OrtValue on the session's device."""
        binding = self.session.io_binding()
        for name in self.inputs:
            value = feeds[name]
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.outputs:
            binding.bind_output(name, self.device_type)
        self.session.run_with_iobinding(binding)
        return dict(zip(self.outputs, binding.get_outputs()))

    def _first_past(self, batch: int) -> dict[str, Any]:
        past: dict[str, Any] = self.empty_past(batch) if self.with_past else {}
        if self.io_binding:
            past = {n: ort.OrtValue.ortvalue_from_numpy(v, self.device_type, 0) for n, v in past.items()}
        return past

    def greedy(self, input_ids: np.ndarray, attention_mask: np.ndarray, max_new_tokens: int) -> Steps:
        ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.asarray(attention_mask, dtype=np.int64)
        batch = ids.shape[0]
        lengths = [max_new_tokens] * batch
        finished = np.zeros(batch, dtype=bool)
        new: list[np.ndarray] = []
        logits_seen: list[np.ndarray] = []
        past = self._first_past(batch)
        run = self.bound_step if self.io_binding else self.step
        seq, full = ids, ids
        start = time.perf_counter()
        first: float | None = None
        for t in range(max_new_tokens):
            feeds: dict[str, Any] = {"input_ids": seq, "attention_mask": mask, **past}
            if self.takes_positions:
                feeds["position_ids"] = position_ids(mask)[:, -seq.shape[1] :]
            out = run(feeds)
            logits = out["logits"].numpy() if isinstance(out["logits"], ort.OrtValue) else out["logits"]
            last = np.asarray(logits[:, -1, :], dtype=np.float32)
            token = last.argmax(axis=-1).astype(np.int64)
            token = np.where(finished, self.pad, token)
            if first is None:
                first = time.perf_counter() - start
            logits_seen.append(last)
            new.append(token)
            for b in range(batch):
                if not finished[b] and int(token[b]) in self.eos:
                    finished[b], lengths[b] = True, t + 1
            if finished.all():
                break
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
            if self.with_past:
                past = {p: out["present." + p[len("past_key_values.") :]] for p in self.past_inputs}
                seq = token[:, None]
            else:
                full = np.concatenate([full, token[:, None]], axis=1)
                seq = full
        total = time.perf_counter() - start
        out_ids = np.stack(new, axis=1) if new else np.zeros((batch, 0), dtype=np.int64)
        return Steps(ids=out_ids, logits=logits_seen, lengths=lengths, seconds_first=first, seconds_total=total)
