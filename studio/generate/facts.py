"""What each decoder architecture needs to be exported with its cache, as data.

`decoder_facts(config)` answers, for a causal LM's config: does the forward take `position_ids` (architectures with
ALiBi -- bloom, mpt, falcon with `alibi` -- do not, as optimum's text-generation configs say), and what cache
layout it keeps (`CacheLayout`: layers, key/value heads, head dim). GQA / MQA models keep their own key/value head
count (llama's `num_key_value_heads`, falcon's `multi_query` / `new_decoder_architecture`, gpt_bigcode's
`multi_query`); gemma's `head_dim` is its own, not hidden / heads.

Architectures whose layers keep no key/value cache (state-space and recurrent layers: mamba, rwkv, jamba, ...) and
encoder-decoders are refused with the reason (`GenerationRefused`), never exported half-right. An architecture
missing from the table is read the generic way (num_hidden_layers, num_key_value_heads or num_attention_heads,
head_dim or hidden_size / num_attention_heads); the exporter checks the layout against the cache the model really
returns, so a wrong reading is an error naming both, not a silent file.

Add an architecture with `@facts_for("model_type", ...)` on a function `config -> Facts` or a row in `_TABLE`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from studio.errors import StudioError
from studio.generate.base import CacheLayout

# layer types (config.layer_types) that keep keys and values the usual way; anything else has other state
ATTENTION_LAYERS = {"full_attention", "sliding_attention", "chunked_attention", "attention"}


class GenerationRefused(StudioError):
    """The model cannot be exported as a generator with its cache; the message says why."""


@dataclass(frozen=True)
class Facts:
    """One architecture's facts for the decoder-with-past export."""

    model_type: str
    layers: int
    kv_heads: int
    head_dim: int
    position_ids: bool = True  # the forward takes position_ids (False: ALiBi models, positions from the mask)
    sliding_window: int | None = None  # the reference cache drops keys past it; the ONNX cache keeps them all

    @property
    def cache(self) -> CacheLayout:
        return CacheLayout(layers=self.layers, kv_heads=self.kv_heads, head_dim=self.head_dim)


Reader = Callable[[Any], Facts]
_READERS: dict[str, Reader] = {}

# model types refused, with the reason
_REFUSED = {
    **{
        t: "its layers keep a recurrent / state-space state, not a key/value cache: the with-past layout "
        "(past_key_values.{i}.key / .value) does not apply"
        for t in (
            "mamba",
            "mamba2",
            "falcon_mamba",
            "falcon_h1",
            "rwkv",
            "recurrent_gemma",
            "jamba",
            "zamba",
            "zamba2",
            "bamba",
            "xlstm",
            "lfm2",
            "qwen3_next",
            "granitemoehybrid",
            "nemotron_h",
            "minimax",
        )
    },
}


def _get(config: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def generic(config: Any, model_type: str | None = None, **overrides: Any) -> Facts:
    """The usual reading: num_hidden_layers; num_key_value_heads or num_attention_heads; head_dim or hidden / heads."""
    layers = _get(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _get(config, "num_attention_heads", "n_head", "num_heads")
    hidden = _get(config, "hidden_size", "n_embd", "d_model")
    if layers is None or heads is None:
        raise GenerationRefused(
            f"{model_type or config.model_type}: the config names no layer count or attention head count "
            "(num_hidden_layers, num_attention_heads), so the cache layout is unknown"
        )
    kv = _get(config, "num_key_value_heads", "num_kv_heads", default=heads)
    head_dim = _get(config, "head_dim", default=None) or (hidden // heads if hidden else None)
    if head_dim is None:
        raise GenerationRefused(f"{config.model_type}: neither head_dim nor hidden_size is in the config")
    window = _get(config, "sliding_window", default=None)
    values: dict[str, Any] = dict(
        model_type=model_type or config.model_type,
        layers=int(layers),
        kv_heads=int(kv),
        head_dim=int(head_dim),
        sliding_window=int(window) if isinstance(window, int) and not isinstance(window, bool) else None,
    )
    values.update(overrides)
    return Facts(**values)


def facts_for(*model_types: str) -> Callable[[Reader], Reader]:
    """Register `reader(config) -> Facts` for these model types."""

    def register(reader: Reader) -> Reader:
        for t in model_types:
            _READERS[t] = reader
        return reader

    return register


# ALiBi: positions come from the attention mask, the forward takes no position_ids (optimum: TextDecoderOnnxConfig)
_TABLE: dict[str, dict[str, Any]] = {
    "bloom": dict(position_ids=False),
    "mpt": dict(position_ids=False),
}


def _tabled(overrides: dict[str, Any]) -> Reader:
    def reader(config: Any) -> Facts:
        return generic(config, **overrides)

    return reader


for _t, _over in _TABLE.items():
    _READERS[_t] = _tabled(_over)


@facts_for("falcon")
def _falcon(config: Any) -> Facts:
    heads = config.num_attention_heads
    if getattr(config, "new_decoder_architecture", False):
        kv = config.num_kv_heads
    elif getattr(config, "multi_query", False):
        kv = 1
    else:
        kv = heads
    return generic(config, kv_heads=int(kv), position_ids=not getattr(config, "alibi", False))


@facts_for("gpt_bigcode")
def _gpt_bigcode(config: Any) -> Facts:
    return generic(config, kv_heads=1 if getattr(config, "multi_query", True) else config.n_head)


@facts_for("gpt_neox", "gpt_neox_japanese", "gptj", "codegen", "gpt_neo", "opt", "gpt2", "phi", "stablelm")
def _heads_only(config: Any) -> Facts:
    """Multi-head attention, no separate key/value head count; head_dim from hidden / heads."""
    return generic(config)


def decoder_facts(config: Any) -> Facts:
    """The facts for a causal LM's config (its text config for multimodal ones). Raises GenerationRefused, naming
    the reason, for what cannot be exported with a key/value cache."""
    if getattr(config, "is_encoder_decoder", False):
        raise GenerationRefused(
            f"{config.model_type} is an encoder-decoder: it is exported as text2text-generation "
            "(encoder + decoder with past), not as one decoder file"
        )
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    model_type = str(getattr(text, "model_type", None) or getattr(config, "model_type", "?"))
    if model_type in _REFUSED:
        raise GenerationRefused(f"{model_type}: {_REFUSED[model_type]}")
    kinds = set(getattr(text, "layer_types", None) or []) - ATTENTION_LAYERS
    if kinds:
        raise GenerationRefused(
            f"{model_type}: its config names layers of type {', '.join(sorted(map(str, kinds)))}, which keep "
            "other state than a key/value cache: the with-past layout does not apply"
        )
    reader = _READERS.get(model_type)
    return reader(text) if reader else generic(text, model_type)


def known_types() -> list[str]:
    """Model types with an entry of their own (the rest are read the generic way)."""
    return sorted(_READERS)


def refused_types() -> dict[str, str]:
    return dict(_REFUSED)
