"""Generation speed: time to first token and tokens/s, PyTorch (transformers' `generate`) against ONNX Runtime.

`measure_speed` times, at batch 1 (the first prompt alone, its padding dropped) and at the sample's batch:

- PyTorch eager: transformers' `generate` with its cache, greedy, `min_new_tokens = max_new_tokens` so it decodes
  exactly as many tokens as ONNX Runtime does (an early EOS would make it look faster); run with transformers'
  default attention, as users run it (`latency.users_attention`; the row's note says which);
- ONNX Runtime CPU through the exported file(s): the `OrtGenerator` the generation check used (built with the
  same intra-op threads, which PyTorch is set to for the timing);
- ONNX Runtime CUDA, decoders only, with IO binding (`BoundDecoder`): the prompt and the cache live on the device,
  each step's `present.*` outputs are bound as the next step's `past_key_values.*` inputs without a copy to the
  host; only the last position's logits come back for the argmax. Only a session whose `get_providers()` shows
  CUDA is timed (studio.checks.runtime.cuda_session); otherwise the row says why and holds no number.

Two calls are timed per engine: a decode of one new token (time to first token: the prompt's forward pass and one
step) and a decode of `max_new_tokens` (tokens/s = batch x max_new_tokens / its median wall time, the prompt's
forward included). On CPU the four callables of one size are timed side by side in alternating rounds
(`latency.side_by_side`, the engine the studio's latency uses: warm-ups, a budget per callable, early stop once
every median is known within +-3%), so a drift of the machine's speed hits both engines alike. Each callable gets
`budget_s` of wall time per size (ConvertSpec.latency_budget_s); ttft_ms and tokens_per_s are medians.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from studio.checks import runtime
from studio.errors import first_line
from studio.generate.base import TEXT_GENERATION, GeneratorFiles, OrtGenerator
from studio.quiet import quiet
from studio.report.model import GenerationSpeed
from studio.spec import default
from studio.timing.latency import PRECISION, Stats, side_by_side, users_attention

TORCH, ORT = "torch", "onnxruntime"
TORCH_CPU = "torch-cpu"
NO_CUDA = "CUDA measurements were turned off (--no-cuda)"
SEQ2SEQ_CUDA = "ORT CUDA with IO binding is timed for decoders (text-generation) only"


def batch1(input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first prompt alone, its padding (mask 0) dropped: what one user sends."""
    keep = np.asarray(attention_mask[0]).astype(bool)
    return np.ascontiguousarray(input_ids[:1, keep]), np.ones((1, int(keep.sum())), dtype=attention_mask.dtype)


def sizes(input_ids: np.ndarray, attention_mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input_ids, attention_mask) at batch 1 and, when it has more rows, at the sample's batch."""
    one = batch1(input_ids, attention_mask)
    return [one] + ([(input_ids, attention_mask)] if input_ids.shape[0] > 1 else [])


# --- PyTorch ---------------------------------------------------------------------------------------


def torch_decode(module: Any, input_ids: np.ndarray, attention_mask: np.ndarray) -> Callable[[int], Any]:
    """new_tokens -> one greedy `generate` call of exactly that many new tokens (transformers' cache)."""
    ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64))
    mask = torch.from_numpy(np.ascontiguousarray(attention_mask, dtype=np.int64))
    cfg = getattr(module, "generation_config", None)
    pad = getattr(cfg, "pad_token_id", None)
    eos = getattr(cfg, "eos_token_id", None)
    if pad is None:
        pad = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    if pad is None:
        pad = 0  # no EOS either: min_new_tokens keeps every sequence going, the pad id is never written

    def decode(new_tokens: int):
        with torch.inference_mode(), quiet(("transformers",)):
            return module.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                num_beams=1,
                use_cache=True,
                pad_token_id=pad,
            )

    return decode


# --- ONNX Runtime CUDA with IO binding ---------------------------------------------------------------

_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


class BoundDecoder:
    """Greedy decoding of a decoder file (optimum's names: input_ids, attention_mask, [position_ids],
    past_key_values.{i}.key / .value -> logits, present.{i}.key / .value) with IO binding on `device`.

    The cache never leaves the device: each step's present.* OrtValues are bound as the next step's inputs;
    only the last position's logits are copied to the host for the argmax (what any sampler needs). A file
    without a cache (--no-cache) is fed the whole sequence at every step. `device` is "cuda" in use; "cpu"
    runs the same loop on a CPU session (how the tests check the loop's tokens against transformers')."""

    def __init__(self, session: Any, files: GeneratorFiles, device: str = "cuda"):
        self.session, self.device = session, device
        inputs = {i.name: i for i in session.get_inputs()}
        self.names = [o.name for o in session.get_outputs()]
        self.past = [n for n in inputs if n.startswith("past_key_values.")]
        self.position_ids = "position_ids" in inputs
        self.types = {n: _NUMPY.get(i.type, np.float32) for n, i in inputs.items()}
        self.logits = self.names.index("logits") if "logits" in self.names else 0
        presents = {n: n.replace("present.", "past_key_values.", 1) for n in self.names if n.startswith("present.")}
        self.present = {i: presents[n] for i, n in enumerate(self.names) if n in presents}
        cache = files.cache
        if self.past and cache is None:
            raise ValueError("the file takes past_key_values.* but GeneratorFiles.cache says no cache layout")
        self.kv = (cache.kv_heads, cache.head_dim) if cache is not None else (0, 0)

    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def _value(self, array: np.ndarray):
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def greedy(self, input_ids: np.ndarray, attention_mask: np.ndarray, max_new_tokens: int) -> np.ndarray:
        """The new token ids [batch, max_new_tokens]."""
        batch = input_ids.shape[0]
        mask = np.asarray(attention_mask, dtype=np.int64)
        ids = np.asarray(input_ids, dtype=np.int64)
        past = {n: self._value(np.zeros((batch, *self.kv[:1], 0, self.kv[1]), self.types[n])) for n in self.past}
        step_ids, new = ids, []
        for _ in range(max_new_tokens):
            binding = self.session.io_binding()
            positions = np.cumsum(mask, axis=-1) - 1
            positions[mask == 0] = 1  # transformers' position ids for left padding
            feeds = {"input_ids": step_ids, "attention_mask": mask}
            if self.position_ids:
                feeds["position_ids"] = positions[:, -step_ids.shape[1] :]
            keep = []  # the OrtValues bound must outlive the run
            for name, array in feeds.items():
                value = self._value(array.astype(self.types.get(name, np.int64)))
                keep.append(value)
                binding.bind_ortvalue_input(name, value)
            for name, value in past.items():
                binding.bind_ortvalue_input(name, value)
            for i, name in enumerate(self.names):
                binding.bind_output(name, self.device if i in self.present else "cpu")
            self.session.run_with_iobinding(binding)
            outputs = binding.get_outputs()
            logits = outputs[self.logits].numpy()[:, -1, :]
            token = logits.argmax(-1).astype(np.int64)[:, None]
            new.append(token)
            mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
            if self.past:
                past = {self.present[i]: outputs[i] for i in self.present}
                step_ids = token
            else:
                ids = np.concatenate([ids, token], axis=1)
                step_ids = ids
        return np.concatenate(new, axis=1) if new else np.zeros((batch, 0), np.int64)


def cuda_decoder(files: GeneratorFiles, threads: int | None = None) -> tuple[BoundDecoder | None, str | None]:
    """(a BoundDecoder on a session that really runs on CUDA, None) or (None, why not)."""
    if files.task != TEXT_GENERATION:
        return None, SEQ2SEQ_CUDA
    name = files.files.get("model")
    if not name:
        return None, f"no decoder file among {sorted(files.files)}"
    made = runtime.cuda_session(Path(files.folder) / name, threads)
    if made.session is None:
        return None, f"ORT: {made.reason}"
    used = made.session.get_providers()
    if not used or used[0] != runtime.CUDA:  # cuda_session checks this too: never a CPU number under CUDA
        return None, f"the session runs on {used[0] if used else 'nothing'}, not CUDA"
    try:
        return BoundDecoder(made.session, files, "cuda"), None
    except Exception as e:
        return None, first_line(e, with_type=True)


def decoded_count(generator: OrtGenerator, ids: np.ndarray, mask: np.ndarray, max_new_tokens: int) -> int:
    """How many steps the generator decodes for these prompts (fewer than asked when every sequence reached
    EOS): PyTorch is then timed for as many, so both decode the same count. Its first call is untimed."""
    return max(1, int(generator.greedy(ids, mask, max_new_tokens).ids.shape[1]))


# --- measuring -----------------------------------------------------------------------------------


def _row(engine: str, provider: str, ids: np.ndarray, new_tokens: int, **kw: Any) -> GenerationSpeed:
    return GenerationSpeed(engine, provider, int(ids.shape[0]), new_tokens, sequence=int(ids.shape[1]), **kw)


def _filled(row: GenerationSpeed, first: Stats | BaseException, whole: Stats | BaseException) -> GenerationSpeed:
    """The row with its medians, or the error that stopped either call (never a number from a failed run)."""
    failed = next((r for r in (first, whole) if isinstance(r, BaseException)), None)
    if failed is not None:
        row.error = first_line(failed, with_type=True)
        return row
    assert isinstance(first, Stats) and isinstance(whole, Stats)
    row.ttft_ms = round(first.p50, 3)
    row.tokens_per_s = round(row.batch * row.new_tokens / (whole.p50 / 1000.0), 2)
    row.iterations = whole.iterations
    return row


def _cpu_pair(
    module: Any,
    generator: OrtGenerator,
    ids: np.ndarray,
    mask: np.ndarray,
    new_tokens: int,
    threads: int,
    budget_s: float,
    attention: str | None,
) -> list[GenerationSpeed]:
    """PyTorch and ORT CPU at one size, their four callables side by side."""
    decode = torch_decode(module, ids, mask)
    fns: dict[tuple[str, str], Callable[[], object]] = {
        (TORCH, "first"): lambda: decode(1),
        (ORT, "first"): lambda: generator.greedy(ids, mask, 1),
        (TORCH, "whole"): lambda: decode(new_tokens),
        (ORT, "whole"): lambda: generator.greedy(ids, mask, new_tokens),
    }
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        stats = side_by_side(fns, budget_s, precision=PRECISION)
    finally:
        torch.set_num_threads(previous)
    provider = (generator.providers() or ["?"])[0]
    ort_note = (
        None if provider == runtime.CPU else f"the generator's sessions run on {', '.join(generator.providers())}"
    )
    return [
        _filled(
            _row(TORCH, TORCH_CPU, ids, new_tokens, threads=threads, note=attention),
            stats[(TORCH, "first")],
            stats[(TORCH, "whole")],
        ),
        _filled(
            _row(ORT, provider, ids, new_tokens, threads=threads, note=ort_note),
            stats[(ORT, "first")],
            stats[(ORT, "whole")],
        ),
    ]


def _cuda_rows(
    bound: BoundDecoder | None, why: str | None, cases, counts: list[int], budget_s: float
) -> list[GenerationSpeed]:
    """ORT CUDA at each size (`counts`: the new tokens the CPU rows decoded there), or why not, per size."""
    rows = []
    for (ids, mask), new_tokens in zip(cases, counts, strict=True):
        row = _row(ORT, runtime.CUDA, ids, new_tokens, io_binding=bound is not None)
        if bound is None:
            row.error = why
        else:
            fns: dict[str, Callable[[], object]] = {
                "first": functools.partial(bound.greedy, ids, mask, 1),
                "whole": functools.partial(bound.greedy, ids, mask, new_tokens),
            }
            stats = side_by_side(fns, budget_s, precision=PRECISION)
            row = _filled(row, stats["first"], stats["whole"])
            row.note = "input ids, mask and the cache bound on the device; last-position logits copied back"
        rows.append(row)
    return rows


def measure_speed(
    module: Any,
    generator: OrtGenerator,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    max_new_tokens: int,
    *,
    threads: int | None = None,
    budget_s: float = default("latency_budget_s"),
    cuda: bool = default("cuda"),
    files: GeneratorFiles | None = None,
) -> list[GenerationSpeed]:
    """Time to first token and tokens/s of PyTorch (`module`, a transformers model with `generate`) and of ONNX
    Runtime (`generator`, built with `threads`), at batch 1 and at the sample's batch (`input_ids` /
    `attention_mask` as the generation check fed them: decoders left-padded), then ORT CUDA where it is really
    in use (`files`: the exported files; default: the generator's). Rows: PyTorch, ORT CPU per size, then the
    CUDA rows (one per size: numbers, or the reason there are none). A call that fails gives its row an error."""
    threads = threads or runtime.default_threads()
    files = files or generator.files
    cases = sizes(np.asarray(input_ids), np.asarray(attention_mask))
    rows: list[GenerationSpeed] = []
    counts = []
    training = bool(getattr(module, "training", False))
    module.eval()  # dropout off: the reference's greedy decode, as users generate
    try:
        with users_attention(module) as attention:
            for ids, mask in cases:
                n = decoded_count(generator, ids, mask, max_new_tokens)
                counts.append(n)
                rows += _cpu_pair(module, generator, ids, mask, n, threads, budget_s, attention)
                if n < max_new_tokens:
                    for row in rows[-2:]:
                        row.note = "; ".join(
                            filter(None, [row.note, f"every sequence ended (EOS) after {n} new tokens"])
                        )
    finally:
        module.train(training)
    bound: BoundDecoder | None
    why: str | None
    bound, why = cuda_decoder(files, threads) if cuda else (None, NO_CUDA)
    try:
        rows += _cuda_rows(bound, why, cases, counts, budget_s)
    finally:
        if bound is not None:
            bound = None  # the CUDA session goes before the next stage
            runtime.release_memory()
    return rows
