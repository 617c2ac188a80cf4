"""Export an encoder-decoder LM (T5, mT5, BART, mBART, Marian, Pegasus: *ForConditionalGeneration) with its cache.

    export_seq2seq(module, config, out_dir, opset=18, with_past=True) -> GeneratorFiles

Three files, optimum's `text2text-generation-with-past` names and layouts (what optimum's ORTModelForSeq2SeqLM,
transformers.js and ONNX Runtime GenAI load):

- `encoder_model.onnx`: `input_ids`, `attention_mask` [batch, encoder_sequence] -> `last_hidden_state`
  [batch, encoder_sequence, d_model]; run once per prompt batch.
- `decoder_model.onnx` (the first step): `encoder_attention_mask` [batch, encoder_sequence], `input_ids` [batch,
  decoder_sequence], `encoder_hidden_states` -> `logits` [batch, decoder_sequence, vocab],
  `present.{i}.decoder.key` / `.value` [batch, heads, decoder_sequence, head_dim] (self-attention) and
  `present.{i}.encoder.key` / `.value` [batch, heads, encoder_sequence, head_dim] (cross-attention).
- `decoder_with_past_model.onnx` (every later step): `encoder_attention_mask`, `input_ids` [batch, 1],
  `past_key_values.{i}.decoder.key` / `.value` [batch, heads, past_decoder_sequence, head_dim],
  `past_key_values.{i}.encoder.key` / `.value` [batch, heads, encoder_sequence, head_dim] -> `logits` [batch, 1,
  vocab], `present.{i}.decoder.key` / `.value` [batch, heads, past_decoder_sequence + 1, head_dim]. The
  cross-attention keys and values are computed once, by the first step, and fed back unchanged: this file holds
  no cross-attention key/value projection at all.

Why two decoder files and not optimum's `decoder_model_merged.onnx` (one graph with an If on `use_cache_branch`):
each file is a plain graph without control flow, so ONNX Runtime fuses and plans each one whole, and every consumer
of the convention loads this form as well. The price is the decoder's weights written twice on disk.

`with_past=False` (`--no-cache`) writes the encoder and `decoder_model.onnx` with `logits` only: the decoder is run
on the whole decoded sequence at every step.

The export is TorchScript's (torch.onnx.export(..., dynamo=False)): a wrapper fills transformers'
`EncoderDecoderCache(DynamicCache(), DynamicCache())` with `.update(k, v, i)` (self-attention, cross-attention), so
the model's own code sees a cache whose cross-attention part is already filled (`is_updated`) and reuses it, and
calls the whole *ForConditionalGeneration (its LM head, T5's rescaling, BART's final_logits_bias) with
`encoder_outputs=(hidden,)`. The examples it is traced on are padded on the encoder side and longer than one token
on the decoder side, so the masks are traced as computations, not skipped. The graph metadata (`studio.cache`,
JSON) records the cache layout and the decoder start, EOS and pad tokens. A file whose weights pass
studio.export.exporters.EXTERNAL_DATA_BYTES keeps them in one `<file>.data` beside it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch

from studio.artifacts import annotate
from studio.errors import ExportError, first_line
from studio.export.exporters import EXTERNAL_DATA_BYTES, weights_apart, write_external
from studio.generate.base import TEXT2TEXT_GENERATION, CacheLayout, GeneratorFiles
from studio.generate.facts import GenerationRefused

ENCODER_FILE = "encoder_model.onnx"
DECODER_FILE = "decoder_model.onnx"
DECODER_WITH_PAST_FILE = "decoder_with_past_model.onnx"
METADATA_KEY = "studio.cache"  # the key studio.generate.decoder writes too: one reader for both
ENCODER_INPUTS = ["input_ids", "attention_mask"]
ENCODER_OUTPUTS = ["last_hidden_state"]
# example sizes the graphs are traced at (not 1: a size-1 dim would be traced as a skipped mask / broadcast)
_BATCH, _ENCODER_LEN, _DECODER_LEN, _PAST_LEN = 2, 7, 3, 4


# encoder-decoders refused, with the reason (measured: the traced files decode other tokens than generate)
REFUSED = {
    "switch_transformers": "its feed-forward layers route each token to an expert chosen from the data, which a "
    "traced graph keeps fixed at the example's routing (ONNX Runtime fails or decodes other tokens)",
    "prophetnet": "its decoder predicts n-gram streams with its own position and cache handling, not the "
    "decoder-with-past layout (past_key_values.{i}.decoder / .encoder)",
    "xlm-prophetnet": "as prophetnet: n-gram streams, not the decoder-with-past layout",
    "led": "its encoder pads the input to a multiple of attention_window in Python, which a traced graph keeps at "
    "the example's length (ONNX Runtime returns no states at other lengths)",
}


@dataclass(frozen=True)
class Seq2SeqFacts:
    """One encoder-decoder's facts for the export: its decoder's cache layout and its special tokens."""

    model_type: str
    layers: int  # decoder layers
    heads: int  # decoder attention heads (self- and cross-attention alike)
    head_dim: int
    hidden: int  # d_model: the encoder's last_hidden_state width
    vocab: int
    decoder_start_token_id: int
    eos_token_id: list[int]
    pad_token_id: int | None

    @property
    def cache(self) -> CacheLayout:
        return CacheLayout(layers=self.layers, kv_heads=self.heads, head_dim=self.head_dim, cross_attention=True)


def _get(obj: Any, *names: str) -> Any:
    for n in names:
        v = getattr(obj, n, None)
        if v is not None:
            return v
    return None


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def seq2seq_facts(config: Any, generation_config: Any = None) -> Seq2SeqFacts:
    """Layers, heads and head dim of the decoder (T5 / mT5: num_decoder_layers, num_heads, d_kv; the BART family:
    decoder_layers, decoder_attention_heads, d_model / heads), and the decoder start / EOS / pad tokens (the
    generation config's first, as generate reads them). Raises GenerationRefused for what is no encoder-decoder."""
    model_type = str(getattr(config, "model_type", "?"))
    if not getattr(config, "is_encoder_decoder", False):
        raise GenerationRefused(
            f"{model_type} is not an encoder-decoder (config.is_encoder_decoder is not set): "
            "it is exported as text-generation (one decoder file), not text2text-generation"
        )
    if model_type in REFUSED:
        raise GenerationRefused(f"{model_type}: {REFUSED[model_type]}")
    if getattr(config, "attention_type", None) == "block_sparse":  # bigbird_pegasus
        raise GenerationRefused(
            f"{model_type}: block-sparse attention picks its blocks (and falls back to full attention on short "
            "inputs) in Python, which a traced graph keeps fixed at the example's choice",
            hint='attention_type "original_full" in config.json exports (full attention at every length)',
        )
    layers = _get(config, "num_decoder_layers", "decoder_layers", "num_layers", "num_hidden_layers")
    heads = _get(config, "decoder_attention_heads", "num_decoder_attention_heads", "num_heads", "num_attention_heads")
    hidden = _get(config, "d_model", "hidden_size")
    if layers is None or heads is None or hidden is None:
        raise GenerationRefused(
            f"{model_type}: the config names no decoder layer count, attention head count or d_model "
            "(num_decoder_layers / decoder_layers, num_heads / decoder_attention_heads, d_model), "
            "so the cache layout is unknown"
        )
    head_dim = _get(config, "d_kv", "head_dim") or int(hidden) // int(heads)
    gen = generation_config
    start = _get(gen, "decoder_start_token_id") if gen is not None else None
    start = start if start is not None else _get(config, "decoder_start_token_id")
    if isinstance(start, (list, tuple)):
        start = start[0] if start else None
    if start is None:
        raise GenerationRefused(
            f"{model_type}: neither the generation config nor config.json names decoder_start_token_id, "
            "the token every decoded sequence starts with"
        )
    eos = _get(gen, "eos_token_id") if gen is not None else None
    pad = _get(gen, "pad_token_id") if gen is not None else None
    return Seq2SeqFacts(
        model_type=model_type,
        layers=int(layers),
        heads=int(heads),
        head_dim=int(head_dim),
        hidden=int(hidden),
        vocab=int(_get(config, "vocab_size") or 0),
        decoder_start_token_id=int(start),
        eos_token_id=_ids(eos if eos is not None else _get(config, "eos_token_id")),
        pad_token_id=int(p) if (p := pad if pad is not None else _get(config, "pad_token_id")) is not None else None,
    )


def past_names(layers: int) -> list[str]:
    """past_key_values.{i}.decoder.key / .value, past_key_values.{i}.encoder.key / .value, layer by layer."""
    return [
        f"past_key_values.{i}.{part}.{kv}"
        for i in range(layers)
        for part in ("decoder", "encoder")
        for kv in ("key", "value")
    ]


def present_names(layers: int, cross: bool) -> list[str]:
    """present.{i}.decoder.key / .value (and present.{i}.encoder.key / .value where `cross`), layer by layer."""
    parts = ("decoder", "encoder") if cross else ("decoder",)
    return [f"present.{i}.{part}.{kv}" for i in range(layers) for part in parts for kv in ("key", "value")]


def decoder_io(layers: int, with_past: bool) -> tuple[list[str], list[str]]:
    """decoder_model.onnx's input and output names."""
    outs = ["logits"] + (present_names(layers, cross=True) if with_past else [])
    return ["encoder_attention_mask", "input_ids", "encoder_hidden_states"], outs


def decoder_with_past_io(layers: int) -> tuple[list[str], list[str]]:
    """decoder_with_past_model.onnx's input and output names."""
    return ["encoder_attention_mask", "input_ids"] + past_names(layers), ["logits"] + present_names(layers, False)


def make_cache(self_kv: Sequence[torch.Tensor], cross_kv: Sequence[torch.Tensor]) -> Any:
    """transformers' EncoderDecoderCache holding these flat (key, value, key, value, ...) tensors per layer;
    a filled cross-attention part is marked updated, so the model reuses it instead of projecting again."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    own, cross = DynamicCache(), DynamicCache()
    for i in range(len(self_kv) // 2):
        own.update(self_kv[2 * i], self_kv[2 * i + 1], i)
    for i in range(len(cross_kv) // 2):
        cross.update(cross_kv[2 * i], cross_kv[2 * i + 1], i)
    return EncoderDecoderCache(own, cross)


def cache_tensors(cache: Any, layers: int, cross: bool) -> list[torch.Tensor]:
    """The cache as flat tensors in present_names' order."""
    out: list[torch.Tensor] = []
    for i in range(layers):
        own = cache.self_attention_cache.layers[i]
        out += [own.keys, own.values]
        if cross:
            other = cache.cross_attention_cache.layers[i]
            out += [other.keys, other.values]
    return out


def _encoder_output(hidden: torch.Tensor) -> Any:
    """The encoder's output as the model's forward reads it: .last_hidden_state, and None for any other field the
    model may look up (switch_transformers reads .router_logits)."""
    from transformers.modeling_outputs import BaseModelOutput

    class EncoderOutput(BaseModelOutput):
        def __getattr__(self, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            return None

    return EncoderOutput(last_hidden_state=hidden)


def _forward(model: torch.nn.Module, mask: torch.Tensor, ids: torch.Tensor, hidden: torch.Tensor, cache: Any) -> Any:
    return model(
        attention_mask=mask,
        decoder_input_ids=ids,
        encoder_outputs=_encoder_output(hidden),
        cache=cache,
        use_cache=cache is not None,
        return_dict=True,
    )


class Encoder(torch.nn.Module):
    """input_ids, attention_mask -> the encoder's last_hidden_state."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.encoder = model.get_encoder()  # type: ignore[operator]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # some encoders give a tuple


class FirstStep(torch.nn.Module):
    """The first decoder step: logits and (with_past) the self- and cross-attention cache it starts."""

    def __init__(self, model: torch.nn.Module, layers: int, with_past: bool):
        super().__init__()
        self.model, self.layers, self.with_past = model, layers, with_past

    def forward(
        self, encoder_attention_mask: torch.Tensor, input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor
    ):
        cache = make_cache([], []) if self.with_past else None
        out = _forward(self.model, encoder_attention_mask, input_ids, encoder_hidden_states, cache)
        if not self.with_past:
            return out.logits
        return (out.logits, *cache_tensors(out.cache, self.layers, cross=True))


class WithPast(torch.nn.Module):
    """One later step: the new token's logits and the self-attention cache one longer; the cross-attention cache is
    read from the inputs (the encoder's hidden states are not needed: only their shape reaches the model)."""

    def __init__(self, model: torch.nn.Module, layers: int, hidden: int):
        super().__init__()
        self.model, self.layers, self.hidden = model, layers, hidden

    def forward(self, encoder_attention_mask: torch.Tensor, input_ids: torch.Tensor, *past: torch.Tensor):
        own = [t for i in range(self.layers) for t in past[4 * i : 4 * i + 2]]
        cross = [t for i in range(self.layers) for t in past[4 * i + 2 : 4 * i + 4]]
        batch, length = encoder_attention_mask.shape
        # the model takes encoder_hidden_states to know cross-attention happens; with the cache updated it projects
        # nothing from them, so a zero view of the right shape stands in (no weights, no work in the graph)
        hidden = past[2].new_zeros(1, 1, 1).expand(batch, length, self.hidden)
        out = _forward(self.model, encoder_attention_mask, input_ids, hidden, make_cache(own, cross))
        return (out.logits, *cache_tensors(out.cache, self.layers, cross=False))


def _axes_encoder() -> dict[str, dict[int, str]]:
    return {n: {0: "batch", 1: "encoder_sequence"} for n in ENCODER_INPUTS + ENCODER_OUTPUTS}


def _axes_decoder(layers: int, with_past: bool) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {
        "encoder_attention_mask": {0: "batch", 1: "encoder_sequence"},
        "input_ids": {0: "batch", 1: "decoder_sequence"},
        "encoder_hidden_states": {0: "batch", 1: "encoder_sequence"},
        "logits": {0: "batch", 1: "decoder_sequence"},
    }
    if with_past:
        for n in present_names(layers, cross=True):
            axes[n] = {0: "batch", 2: "encoder_sequence" if ".encoder." in n else "decoder_sequence"}
    return axes


def _axes_with_past(layers: int) -> dict[str, dict[int, str]]:
    # input_ids stay [batch, 1]: the graph is traced at one new token, where the self-attention mask is skipped
    axes: dict[str, dict[int, str]] = {
        "encoder_attention_mask": {0: "batch", 1: "encoder_sequence"},
        "input_ids": {0: "batch"},
        "logits": {0: "batch"},
    }
    for n in past_names(layers):
        axes[n] = {0: "batch", 2: "encoder_sequence" if ".encoder." in n else "past_decoder_sequence"}
    for n in present_names(layers, cross=False):
        axes[n] = {0: "batch", 2: "past_decoder_sequence + 1"}
    return axes


def _examples(facts: Seq2SeqFacts) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder ids and a mask that pads the second row (right padding), so the mask is traced as a computation."""
    g = torch.Generator().manual_seed(0)
    low = min(4, max(facts.vocab - 1, 0))
    ids = torch.randint(low, max(facts.vocab, low + 1), (_BATCH, _ENCODER_LEN), generator=g)
    mask = torch.ones(_BATCH, _ENCODER_LEN, dtype=torch.long)
    mask[1, _ENCODER_LEN - 2 :] = 0
    if facts.pad_token_id is not None:
        ids[1, _ENCODER_LEN - 2 :] = facts.pad_token_id
    return ids, mask


@contextlib.contextmanager
def _eval(module: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode for the export, its own mode restored after. The wrappers are made inside, in eval
    mode too: torch.onnx.export restores a wrapper's mode, and one in train mode would turn the model's dropout on
    (for the export's own reference run and for everything after it)."""
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


def check_layout(facts: Seq2SeqFacts, present: Sequence[torch.Tensor], names: Sequence[str]) -> None:
    """The cache the model really returns has the layout the facts say, or the export stops naming both."""
    if len(present) != len(names):
        raise ExportError(f"{facts.model_type}: the model returned {len(present)} cache tensors, expected {len(names)}")
    for name, t in zip(names, present):
        if t.dim() != 4 or (t.shape[1], t.shape[3]) != (facts.heads, facts.head_dim):
            raise ExportError(
                f"{facts.model_type}: {name} has shape {list(t.shape)}; the config says "
                f"[batch, {facts.heads} heads, sequence, {facts.head_dim} head dim]",
                hint="studio/generate/seq2seq.py (seq2seq_facts) reads this architecture's layout; fix its reading",
            )


def metadata(facts: Seq2SeqFacts, role: str, with_past: bool) -> dict[str, str]:
    """What the graph records: the task, the cache layout, and the tokens a decoding loop needs."""
    info: dict[str, Any] = {"task": TEXT2TEXT_GENERATION, "role": role, "with_past": with_past}
    if with_past and role != "encoder":
        c = facts.cache
        info.update(layers=c.layers, kv_heads=c.kv_heads, head_dim=c.head_dim, layout=c.layout, cross_attention=True)
        info.update(
            inputs="past_key_values.{i}.decoder.key/.value, past_key_values.{i}.encoder.key/.value",
            outputs="present.{i}.decoder.key/.value"
            + (", present.{i}.encoder.key/.value" if role == "decoder" else ""),
        )
    info.update(
        decoder_start_token_id=facts.decoder_start_token_id,
        eos_token_id=facts.eos_token_id,
        pad_token_id=facts.pad_token_id,
    )
    return {METADATA_KEY: json.dumps(info), "studio.model_type": facts.model_type}


def _save(tmp: Path, dest: Path, props: dict[str, str], external: bool) -> bool:
    """The exported graph from `tmp` to `dest` with `props` in its metadata; its weights in one `<dest>.data` when
    `external` or when the exporter wrote them apart (one file per tensor, above 2 GiB). Returns whether the weights
    are external. The graph and a `.data` that is already the one file are moved, not rewritten: the metadata is
    appended (studio.artifacts.annotate), which saves a full read and write of the weights."""
    others = sorted(p.name for p in tmp.parent.iterdir() if p.name != tmp.name)
    data = dest.name + ".data"
    if others in ([], [data]) and external == bool(others):
        if others:
            shutil.move(str(tmp.parent / data), str(dest.parent / data))
        shutil.move(str(tmp), str(dest))
        annotate(dest, props)
        return bool(others)
    model = onnx.load(str(tmp), load_external_data=True)
    for k, v in props.items():
        entry = next((p for p in model.metadata_props if p.key == k), None) or model.metadata_props.add()
        entry.key, entry.value = k, v
    apart = external or bool(others)
    if apart:
        onnx.save(
            model, str(dest), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
            size_threshold=1024,
        )  # fmt: skip
    else:
        onnx.save(model, str(dest))
    return apart


def _export_one(
    wrapper: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    io: tuple[list[str], list[str]],
    axes: dict[str, dict[int, str]],
    dest: Path,
    opset: int,
    props: dict[str, str],
    external: bool,
) -> bool:
    """One file: TorchScript export into a scratch folder beside `dest`, then `_save`. With `external` the weights
    never enter the protobuf (the house's weights_apart seam): they are streamed into `<dest>.data`."""
    tmp_dir = Path(tempfile.mkdtemp(prefix=".export-", dir=dest.parent))
    try:
        tmp = tmp_dir / dest.name
        apart: contextlib.AbstractContextManager[dict[str, torch.Tensor]] = (
            weights_apart() if external else contextlib.nullcontext({})
        )
        try:
            with apart as taken:
                torch.onnx.export(
                    wrapper,
                    args,
                    str(tmp),
                    input_names=io[0],
                    output_names=io[1],
                    dynamic_axes=axes,
                    opset_version=opset,
                    dynamo=False,
                    do_constant_folding=True,
                )
            if taken:
                write_external(tmp, taken)
        except Exception as e:
            raise ExportError(
                f"torch.onnx (TorchScript) could not export {dest.name}: {first_line(e, with_type=True)}"
            ) from e
        return _save(tmp, dest, props, external)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of the module's parameters and buffers, shared tensors counted once."""
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def export_seq2seq(
    module: torch.nn.Module,
    config: Any,
    out_dir: str | Path,
    opset: int = 18,
    with_past: bool = True,
    external_data: bool | None = None,
) -> GeneratorFiles:
    """Write encoder_model.onnx, decoder_model.onnx and (with_past) decoder_with_past_model.onnx into `out_dir` for
    the encoder-decoder LM `module`. Raises GenerationRefused for what is no encoder-decoder, ExportError when
    torch.onnx cannot export it or its cache is not the layout the config says."""
    facts = seq2seq_facts(config, getattr(module, "generation_config", None))
    if not callable(getattr(module, "get_encoder", None)) or module.get_encoder() is module:  # type: ignore[operator]
        raise GenerationRefused(f"{facts.model_type}: the model has no separate encoder (get_encoder())")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    external = weight_bytes(module) > EXTERNAL_DATA_BYTES if external_data is None else bool(external_data)
    ids, mask = _examples(facts)
    start = torch.full((_BATCH, _DECODER_LEN), facts.decoder_start_token_id, dtype=torch.long)
    dec_io, past_io = decoder_io(facts.layers, with_past), decoder_with_past_io(facts.layers)
    files = {"encoder": ENCODER_FILE, "decoder": DECODER_FILE}
    io = {"encoder": ENCODER_INPUTS + ENCODER_OUTPUTS, "decoder": dec_io[0] + dec_io[1]}
    with _eval(module), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder, first = Encoder(module).eval(), FirstStep(module, facts.layers, with_past).eval()
        later = WithPast(module, facts.layers, facts.hidden).eval()
        hidden = encoder(ids, mask)
        externals = [
            _export_one(
                encoder,
                (ids, mask),
                (ENCODER_INPUTS, ENCODER_OUTPUTS),
                _axes_encoder(),
                out / ENCODER_FILE,
                opset,
                metadata(facts, "encoder", with_past),
                external,
            )
        ]
        step = first(mask, start, hidden)
        if with_past:
            check_layout(facts, step[1:], dec_io[1][1:])
        externals.append(
            _export_one(
                first,
                (mask, start, hidden),
                dec_io,
                _axes_decoder(facts.layers, with_past),
                out / DECODER_FILE,
                opset,
                metadata(facts, "decoder", with_past),
                external,
            )
        )
        if with_past:
            past = _example_past(facts, step[1:])
            externals.append(
                _export_one(
                    later,
                    (mask, start[:, :1], *past),
                    past_io,
                    _axes_with_past(facts.layers),
                    out / DECODER_WITH_PAST_FILE,
                    opset,
                    metadata(facts, "decoder_with_past", True),
                    external,
                )
            )
            files["decoder_with_past"] = DECODER_WITH_PAST_FILE
            io["decoder_with_past"] = past_io[0] + past_io[1]
    return GeneratorFiles(
        task=TEXT2TEXT_GENERATION,
        folder=out,
        files=files,
        io=io,
        cache=facts.cache if with_past else None,
        external_data=any(externals),
    )


def _example_past(facts: Seq2SeqFacts, present: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The with-past example: a self-attention past of _PAST_LEN steps (random: only its shape is traced) and the
    cross-attention keys / values the first step really returned."""
    g = torch.Generator().manual_seed(1)
    out: list[torch.Tensor] = []
    for i in range(facts.layers):
        own = present[4 * i]
        shape = (own.shape[0], facts.heads, _PAST_LEN, facts.head_dim)
        out += [torch.randn(shape, generator=g, dtype=own.dtype), torch.randn(shape, generator=g, dtype=own.dtype)]
        out += [present[4 * i + 2], present[4 * i + 3]]
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """What a file of this export records under studio.cache ({} when it records nothing)."""
    model = onnx.load(str(path), load_external_data=False)
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            return dict(json.loads(p.value))
    return {}
