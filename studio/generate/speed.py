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

One call is timed per engine: a greedy decode of `max_new_tokens` (tokens/s = batch x max_new_tokens / its median
wall time, the prompt's forward included); its time to first token (the prompt's forward and the first step) is
noted inside the same decode (PyTorch: a stopping criterion that never stops, called by generate after each
token; ORT: the generator's Steps.seconds_first; CUDA: when the first logits reach the host) and ttft_ms is the
median over the decodes, the first (cold) one left out. On CPU both engines of one size are timed side by side
in alternating rounds (`latency.side_by_side`, the engine the studio's latency uses: warm-ups, a budget per
callable, early stop once every median is known within +-3%), so a drift of the machine's speed hits both
engines alike. Each callable gets `budget_s` of wall time per size (ConvertSpec.latency_budget_s). The threads
of both are the studio's (runtime.default_threads unless given); a busy machine (load average above its CPUs)
is said in each CPU row's note.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from studio.checks import runtime
from studio.errors import first_line
from studio.generate.base import TEXT_GENERATION, GeneratorFiles, OrtGenerator
from studio.generate.reference import FirstToken
from studio.generate.verify import BATCHED, ONE_BY_ONE, Timed
from studio.quiet import quiet
from studio.report.model import GenerationSpeed
from studio.spec import default
from studio.timing.latency import PRECISION, Stats, machine, side_by_side, users_attention

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


def torch_decode(
    module: Any, input_ids: np.ndarray, attention_mask: np.ndarray, firsts: list[float] | None = None
) -> Callable[[int], Any]:
    """new_tokens -> one greedy `generate` call of exactly that many new tokens (transformers' cache); with
    `firsts`, each call appends its time to the first new token (ms)."""
    from transformers import StoppingCriteriaList

    ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64))
    mask = torch.from_numpy(np.ascontiguousarray(attention_mask, dtype=np.int64))
    cfg = getattr(module, "generation_config", None)
    pad = getattr(cfg, "pad_token_id", None)
    eos = getattr(cfg, "eos_token_id", None)
    if pad is None:
        pad = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    if pad is None:
        pad = 0  # no EOS either: min_new_tokens keeps every sequence going, the pad id is never written

    clock = FirstToken(firsts) if firsts is not None else None

    def decode(new_tokens: int):
        criteria = StoppingCriteriaList([clock.begin()]) if clock is not None else None
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
                stopping_criteria=criteria,
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
        self.firsts: list[float] = []  # each decode's time to its first new token, ms (the logits' copy waits for it)

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
        step_ids, new = ids, list[np.ndarray]()
        start = time.perf_counter()
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
            if not new:
                self.firsts.append((time.perf_counter() - start) * 1000.0)
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


def decoded_count(generator: OrtGenerator, ids: np.ndarray, mask: np.ndarray, max_new_tokens: int) -> tuple[int, bool]:
    """(how many steps the generator decodes for these prompts, whether its Steps time the first token). Fewer
    steps than asked when every sequence reached EOS: PyTorch is then timed for as many, so both decode the same
    count. This call is a warm-up, untimed."""
    steps = generator.greedy(ids, mask, max_new_tokens)
    return max(1, int(steps.ids.shape[1])), steps.seconds_first is not None


# --- measuring -----------------------------------------------------------------------------------


def _row(engine: str, provider: str, ids: np.ndarray, new_tokens: int, **kw: Any) -> GenerationSpeed:
    return GenerationSpeed(engine, provider, int(ids.shape[0]), new_tokens, sequence=int(ids.shape[1]), **kw)


def first_ms(firsts: list[float]) -> float | None:
    """The median time to first token of a callable's decodes, its first (cold) decode left out."""
    kept = firsts[1:] if len(firsts) > 1 else firsts
    return float(np.median(kept)) if kept else None


def _filled(
    row: GenerationSpeed, first: Stats | BaseException | float | None, whole: Stats | BaseException
) -> GenerationSpeed:
    """The row with its medians (`first`: a Stats of one-token decodes, or the ms measured inside the whole
    decodes), or the error that stopped either call (never a number from a failed run)."""
    failed = next((r for r in (first, whole) if isinstance(r, BaseException)), None)
    if failed is not None:
        row.error = first_line(failed, with_type=True)
        return row
    assert isinstance(whole, Stats) and not isinstance(first, BaseException)
    ttft = first.p50 if isinstance(first, Stats) else first
    row.ttft_ms = round(ttft, 3) if ttft is not None else None
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
    ort_clock: bool,
) -> list[GenerationSpeed]:
    """PyTorch and ORT CPU at one size, timed side by side: each engine's whole decode, its time to first token
    noted inside each decode (PyTorch: a stopping criterion's first call; ORT: Steps.seconds_first). A generator
    whose Steps do not time the first token (`ort_clock` False) gets a one-token decode timed beside them."""
    torch_firsts: list[float] = []
    ort_firsts: list[float] = []
    decode = torch_decode(module, ids, mask, torch_firsts)

    def ort_whole() -> None:
        steps = generator.greedy(ids, mask, new_tokens)
        if steps.seconds_first is not None:
            ort_firsts.append(steps.seconds_first * 1000.0)

    fns: dict[tuple[str, str], Callable[[], object]] = {
        (TORCH, "whole"): lambda: decode(new_tokens),
        (ORT, "whole"): ort_whole,
    }
    if not ort_clock:
        fns[(ORT, "first")] = lambda: generator.greedy(ids, mask, 1)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        stats = side_by_side(fns, budget_s, precision=PRECISION, warm=frozenset({(ORT, "whole")}))
    finally:
        torch.set_num_threads(previous)
    provider = (generator.providers() or ["?"])[0]
    ort_note = (
        None if provider == runtime.CPU else f"the generator's sessions run on {', '.join(generator.providers())}"
    )
    return [
        _filled(
            _row(TORCH, TORCH_CPU, ids, new_tokens, threads=threads, note=attention),
            first_ms(torch_firsts),
            stats[(TORCH, "whole")],
        ),
        _filled(
            _row(ORT, provider, ids, new_tokens, threads=threads, note=ort_note),
            stats[(ORT, "first")] if not ort_clock else first_ms(ort_firsts),
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
            bound.firsts.clear()
            fns: dict[str, Callable[[], object]] = {"whole": functools.partial(bound.greedy, ids, mask, new_tokens)}
            stats = side_by_side(fns, budget_s, precision=PRECISION)
            row = _filled(row, first_ms(bound.firsts), stats["whole"])
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
    counts: list[int] = []
    before = machine()
    training = bool(getattr(module, "training", False))
    module.eval()  # dropout off: the reference's greedy decode, as users generate
    try:
        with users_attention(module) as attention:
            for ids, mask in cases:
                n, clocked = decoded_count(generator, ids, mask, max_new_tokens)
                counts.append(n)
                rows += _cpu_pair(module, generator, ids, mask, n, threads, budget_s, attention, clocked)
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
    busy = busy_note(before, machine())
    for row in rows:
        if busy and row.provider != runtime.CUDA and row.error is None:
            row.note = "; ".join(filter(None, [row.note, busy]))
    return rows


CHECK_NOTE = "from the generation check's own decodes"


def _median(xs: list[float | None]) -> float | None:
    kept = [x for x in xs if x is not None]
    return float(np.median(kept)) if kept else None


def _check_row(engine: str, provider: str, group: list[Timed], threads: int, note: str) -> GenerationSpeed:
    """One engine's row at one size: the medians over the check's decodes of that size (each decode's tokens/s =
    batch x its new tokens / its wall time; ttft = its time to the first new token)."""
    torch_side = engine == TORCH
    firsts = [t.reference_first if torch_side else t.onnx_first for t in group]
    rates, counts = [], []
    for t in group:
        total, tokens = (t.reference_total, t.reference_tokens) if torch_side else (t.onnx_total, t.onnx_tokens)
        counts.append(tokens)
        if total is not None and total > 0:
            rates.append(t.batch * tokens / total)
    first = _median(firsts)
    mode = group[0].mode
    lengths = sorted({t.sequence for t in group})
    how = (
        f"{CHECK_NOTE}: median of {len(group)} prompt{'s' * (len(group) != 1)} decoded one by one"
        + (f" ({lengths[0]}-{lengths[-1]} tokens)" if len(lengths) > 1 else "")
        if mode == ONE_BY_ONE
        else f"{CHECK_NOTE}: the batched decode"
    )
    row = GenerationSpeed(
        engine,
        provider,
        group[0].batch,
        int(np.median(counts)),
        ttft_ms=round(first * 1000.0, 3) if first is not None else None,
        tokens_per_s=round(float(np.median(rates)), 2) if rates else None,
        threads=threads,
        iterations=len(rates),
        sequence=int(np.median([t.sequence for t in group])),
        note="; ".join(filter(None, [note, how])),
    )
    if not rates:
        row.error = "the check's decodes were not timed"
    return row


def speed_from_check(
    timings: list[Timed], providers: list[str], threads: int, attention: str | None = None, busy: str | None = None
) -> list[GenerationSpeed]:
    """PyTorch (transformers' `generate`, the check's reference) and ONNX Runtime CPU rows from the generation
    check's own timed decodes, with no decode of their own: at batch 1 the medians over the prompts decoded one by
    one, at the sample's batch the batched decode. `providers`: what the generator's session really used;
    `threads`: what both engines ran with (the check sets torch's to the studio's); `attention`: how PyTorch ran;
    `busy`: a busy machine, said in every row."""
    provider = (providers or ["?"])[0]
    ort_note = None if provider == runtime.CPU else f"the generator's sessions run on {', '.join(providers)}"
    rows: list[GenerationSpeed] = []
    for mode in (ONE_BY_ONE, BATCHED):
        group = [t for t in timings if t.mode == mode]
        if not group:
            continue
        alone = [t for t in group if not t.reference_shared]  # both engines' figures from the same decodes
        shared = None
        if len(alone) < len(group):
            shared = (
                f"{len(group) - len(alone)} of the check's decodes left out (their PyTorch side ran beside the "
                "export's writing, checker and session creation)"
                if alone
                else "PyTorch's decodes ran beside the export's writing, checker and session creation (in a "
                "thread): its figures are pessimistic"
            )
        use = alone or group
        rows.append(_check_row(TORCH, TORCH_CPU, use, threads, "; ".join(filter(None, [attention, busy, shared]))))
        rows.append(_check_row(ORT, provider, use, threads, "; ".join(filter(None, [ort_note, busy, shared]))))
    return rows


def cuda_speed(
    files: GeneratorFiles,
    timings: list[Timed],
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    *,
    threads: int | None = None,
    budget_s: float = default("latency_budget_s"),
    cuda: bool = default("cuda"),
) -> list[GenerationSpeed]:
    """The ORT CUDA rows (IO binding, repeated decodes: what the CPU check cannot show) at batch 1 and the sample's
    batch, as many new tokens as the check's ORT decodes made; or, per size, why there is no number."""
    cases = sizes(np.asarray(input_ids), np.asarray(attention_mask))
    counts = []
    for mode in (ONE_BY_ONE, BATCHED)[: len(cases)]:
        made = [t.onnx_tokens for t in timings if t.mode == mode]
        counts.append(max(1, made[0]) if made else 1)
    bound: BoundDecoder | None
    why: str | None
    bound, why = cuda_decoder(files, threads) if cuda else (None, NO_CUDA)
    try:
        return _cuda_rows(bound, why, cases, counts, budget_s)
    finally:
        if bound is not None:
            bound = None  # the CUDA session goes before the next stage
            runtime.release_memory()


def busy_note(before: dict[str, Any], after: dict[str, Any]) -> str | None:
    """What the rows must say when other processes competed for the CPU while timing (a load average above the
    logical CPUs): every CPU figure is then pessimistic, PyTorch's multi-threaded kernels most of all."""
    cpus = before.get("logical_cpus")
    loads = [x for x in (before.get("load_avg"), after.get("load_avg")) if isinstance(x, (int, float))]
    if not cpus or not loads or max(loads) <= cpus:
        return None
    return f"the machine was busy: load average {max(loads):.1f} on {cpus} logical CPUs"
