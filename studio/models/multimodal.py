"""The studio's own multimodal classifier: one text field (BERT encoder) + numeric tabular fields.

Architecture
    text  -> BertModel (built from a plain BertConfig dict, no hub) -> pooled [CLS] vector (hidden)
    tabular fields, each [batch, width] raw values -> (x - mean) / std (buffers) -> concatenated
    [pooled ; normalised tabular] -> Linear -> ReLU -> Dropout -> Linear -> logits [batch, labels]

`forward(batch)` takes ONE dict:
    {config.text_key: input_ids [B, S] int, config.mask_key: attention_mask [B, S] int,
     <tabular field name>: float [B, width] (a [B] tensor is read as width 1), ...}
There is no Python branching on tensor sizes and no `.item()`, so `torch.export` / the dynamo ONNX
exporter handle dynamic batch and sequence (through a wrapper with one named parameter per input).

Checkpoint format (one file, `torch.save`, loadable with `torch.load(path, weights_only=True)`):
    {
      "format": "onnx-studio/multimodal",
      "version": 1,
      "config": MultimodalConfig.to_dict(),         # plain dict: encoder (BertConfig kwargs), text_field,
                                                    # text_key, mask_key, tab_fields {name: width},
                                                    # labels, head_hidden, dropout, tab_mean, tab_std, ...
      "state_dict": MultimodalClassifier.state_dict(),   # encoder.*, head.*, tab_mean, tab_std
      "tokenizer": {"tokenizer.json": <fast tokenizer JSON string>,
                    "config": {special tokens, model_max_length, padding_side, truncation_side,
                               model_input_names}},
    }
`save_checkpoint` writes it; `studio.sources.multimodal` reads it (and Lightning-style variants).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from studio.errors import CheckpointError

FORMAT = "onnx-studio/multimodal"
VERSION = 1
ARCHITECTURE = "MultimodalClassifier"

# Tokenizer settings carried next to tokenizer.json (everything else lives in the JSON itself).
SPECIAL_TOKENS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token", "bos_token", "eos_token")
TOKENIZER_SETTINGS = ("model_max_length", "padding_side", "truncation_side", "model_input_names")


@dataclass
class MultimodalConfig:
    """Everything needed to rebuild a MultimodalClassifier (weights aside).

    encoder:     BertConfig keyword arguments (vocab_size, hidden_size, num_hidden_layers, ...).
    labels:      class names, in logit order.
    text_field:  the data column holding the text (e.g. "review").
    text_key / mask_key: keys of input_ids / attention_mask in the forward batch dict.
    tab_fields:  numeric field name -> width (1 for a scalar, k for a k-vector), in feature order.
    tab_vocab:   categorical fields: field name -> its categories (short strings such as phone / chat /
                 email), in one-hot order; the field's width in tab_fields is the number of categories.
                 The sample's column holds the strings; the graph input takes the one-hot block.
    head_hidden, dropout: the MLP head.
    tab_mean / tab_std: per-field normalisation statistics (name -> list of `width` floats);
                 None = identity (mean 0, std 1). The model's buffers are the source of truth;
                 `save_checkpoint` writes them back here.
    attn_implementation: "eager" (exports with both ONNX exporters) or "sdpa".
    """

    encoder: dict[str, Any]
    labels: list[str]
    text_field: str = "text"
    tab_fields: dict[str, int] = field(default_factory=dict)
    text_key: str = "input_ids"
    mask_key: str = "attention_mask"
    head_hidden: int = 64
    dropout: float = 0.1
    tab_mean: dict[str, list[float]] | None = None
    tab_std: dict[str, list[float]] | None = None
    attn_implementation: str = "eager"
    tab_vocab: dict[str, list[str]] | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent setting."""
        if not isinstance(self.encoder, dict):
            raise ValueError(f"encoder must be a dict of BertConfig arguments, got {type(self.encoder).__name__}")
        if not isinstance(self.labels, (list, tuple)) or not self.labels:
            raise ValueError("labels must be a non-empty list of class names")
        if not all(isinstance(x, str) for x in self.labels) or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be distinct strings, got {list(self.labels)!r}")
        if not isinstance(self.tab_fields, dict):
            raise ValueError(f"tab_fields must be a dict name -> width, got {type(self.tab_fields).__name__}")
        for name, width in self.tab_fields.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"tabular field names must be non-empty strings, got {name!r}")
            if isinstance(width, bool) or not isinstance(width, int) or width < 1:
                raise ValueError(f"tabular field {name!r} has width {width!r}; expected an integer >= 1")
        for key in (self.text_key, self.mask_key):
            if key in self.tab_fields:
                raise ValueError(f"tabular field {key!r} collides with the text inputs' batch keys")
        if self.text_key == self.mask_key:
            raise ValueError("text_key and mask_key must differ")
        for stat_name, stats in (("tab_mean", self.tab_mean), ("tab_std", self.tab_std)):
            if stats is None:
                continue
            if not isinstance(stats, dict):
                raise ValueError(f"{stat_name} must be a dict field -> list of floats")
            for name, values in stats.items():
                if name not in self.tab_fields:
                    raise ValueError(f"{stat_name} names {name!r}, which is not a tabular field")
                if len(values) != self.tab_fields[name]:
                    raise ValueError(
                        f"{stat_name}[{name!r}] has {len(values)} values; the field's width is {self.tab_fields[name]}"
                    )
                if stat_name == "tab_std" and any(float(v) <= 0 for v in values):
                    raise ValueError(f"tab_std[{name!r}] must be > 0, got {list(values)!r}")
        for name, vocab in (self.tab_vocab or {}).items():
            if name not in self.tab_fields:
                raise ValueError(f"tab_vocab names {name!r}, which is not a tabular field")
            if (
                not isinstance(vocab, (list, tuple))
                or not vocab
                or not all(isinstance(v, str) for v in vocab)
                or len(set(vocab)) != len(vocab)
            ):
                raise ValueError(f"tab_vocab[{name!r}] must be a non-empty list of distinct strings")
            if len(vocab) != self.tab_fields[name]:
                raise ValueError(
                    f"tab_vocab[{name!r}] has {len(vocab)} categories; the field's width is "
                    f"{self.tab_fields[name]} (one-hot: one feature per category)"
                )
        if self.tab_vocab is not None and not isinstance(self.tab_vocab, dict):
            raise ValueError("tab_vocab must be a dict field -> list of category strings")
        if int(self.head_hidden) < 1:
            raise ValueError(f"head_hidden must be >= 1, got {self.head_hidden}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.attn_implementation not in ("eager", "sdpa"):
            raise ValueError(f"attn_implementation must be 'eager' or 'sdpa', got {self.attn_implementation!r}")

    @property
    def tab_width(self) -> int:
        return sum(self.tab_fields.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain builtins only (dict / list / str / int / float / None): safe for weights_only loading."""
        d = asdict(self)
        d["labels"] = list(self.labels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MultimodalConfig:
        """Build from a dict (unknown keys are ignored). Raise CheckpointError naming what is wrong."""
        if not isinstance(d, Mapping):
            raise CheckpointError(f"The multimodal config must be a dict, found {type(d).__name__}.")
        missing = [k for k in ("encoder", "labels") if k not in d]
        if missing:
            raise CheckpointError(
                f"The multimodal config lacks {', '.join(repr(k) for k in missing)}; found keys: "
                f"{sorted(map(str, d))}.",
                hint="A multimodal config needs at least 'encoder' (BertConfig arguments) and 'labels'.",
            )
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        if "tab_fields" in kwargs and isinstance(kwargs["tab_fields"], Mapping):
            kwargs["tab_fields"] = dict(kwargs["tab_fields"])
        if isinstance(kwargs.get("tab_vocab"), Mapping):
            kwargs["tab_vocab"] = {
                str(k): list(v) if isinstance(v, (list, tuple)) else v for k, v in kwargs["tab_vocab"].items()
            }
        if "labels" in kwargs and isinstance(kwargs["labels"], tuple):
            kwargs["labels"] = list(kwargs["labels"])
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"The multimodal config is invalid: {e}.") from e


class MultimodalClassifier(nn.Module):
    """BERT text encoder + normalised tabular features -> MLP head -> logits. See the module docstring."""

    tab_mean: torch.Tensor  # buffers (register_buffer): the tabular features' mean and std, concatenated
    tab_std: torch.Tensor

    def __init__(self, config: MultimodalConfig):
        super().__init__()
        from transformers import BertConfig, BertModel  # heavy import, kept local

        self.config = config
        # attn_implementation is one of PretrainedConfig's **kwargs, which BertConfig's signature does not list
        enc_kwargs = {k: v for k, v in config.encoder.items() if k != "attn_implementation"}
        bert_config = BertConfig(**enc_kwargs | {"attn_implementation": config.attn_implementation})
        self.encoder = BertModel(bert_config, add_pooling_layer=True)
        self.tab_names = tuple(config.tab_fields)
        self.tab_widths = tuple(config.tab_fields[n] for n in self.tab_names)
        mean, std = [], []
        for name, width in zip(self.tab_names, self.tab_widths):
            mean += list((config.tab_mean or {}).get(name, [0.0] * width))
            std += list((config.tab_std or {}).get(name, [1.0] * width))
        self.register_buffer("tab_mean", torch.tensor(mean, dtype=torch.float32).reshape(-1))
        self.register_buffer("tab_std", torch.tensor(std, dtype=torch.float32).reshape(-1))
        self.head = nn.Sequential(
            nn.Linear(bert_config.hidden_size + config.tab_width, config.head_hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.head_hidden, len(config.labels)),
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [batch, len(labels)] for one dict batch (raw tabular values; normalised here)."""
        expected = (self.config.text_key, self.config.mask_key) + self.tab_names
        absent = [k for k in expected if k not in batch]
        if absent:
            raise KeyError(f"batch lacks {absent}; the model expects keys {list(expected)}")
        out = self.encoder(input_ids=batch[self.config.text_key], attention_mask=batch[self.config.mask_key])
        features = out.pooler_output
        if self.tab_names:
            parts = []
            for name in self.tab_names:
                x = batch[name]
                if x.dim() == 1:  # rank is static under export: no data-dependent branching
                    x = x.unsqueeze(-1)
                parts.append(x.to(self.tab_mean.dtype))
            tab = (torch.cat(parts, dim=-1) - self.tab_mean) / self.tab_std
            features = torch.cat([features, tab], dim=-1)
        return self.head(features)

    # -- normalisation statistics ------------------------------------------------------------
    def normalization(self) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """Current (mean, std) per tabular field, read from the buffers."""
        mean: dict[str, list[float]] = {}
        std: dict[str, list[float]] = {}
        start = 0
        for name, width in zip(self.tab_names, self.tab_widths):
            mean[name] = [float(v) for v in self.tab_mean[start : start + width].tolist()]
            std[name] = [float(v) for v in self.tab_std[start : start + width].tolist()]
            start += width
        return mean, std

    @torch.no_grad()
    def fit_normalization(self, columns: Mapping[str, torch.Tensor]) -> None:
        """Set mean/std buffers from training values: field name -> tensor [N, width] (or [N])."""
        mean, std = [], []
        for name, width in zip(self.tab_names, self.tab_widths):
            if name not in columns:
                raise KeyError(f"fit_normalization needs values for field {name!r}")
            x = torch.as_tensor(columns[name], dtype=torch.float32).reshape(-1, width)
            mean.append(x.mean(dim=0))
            s = x.std(dim=0, unbiased=False) if x.shape[0] > 1 else torch.ones(width)
            std.append(torch.where(s > 1e-12, s, torch.ones_like(s)))
        if self.tab_names:
            self.tab_mean.copy_(torch.cat(mean))
            self.tab_std.copy_(torch.cat(std))
        self.config.tab_mean, self.config.tab_std = self.normalization()


def build_model(config: MultimodalConfig) -> MultimodalClassifier:
    """A freshly initialised model (eval mode, CPU)."""
    return MultimodalClassifier(config).eval()


# -- tokenizer round trip ------------------------------------------------------------------------
def tokenizer_to_dict(tokenizer: Any, max_length: int | None = None) -> dict[str, Any]:
    """A fast (tokenizers-backed) transformers tokenizer -> {"tokenizer.json": str, "config": {...}}.

    `max_length` caps model_max_length (e.g. at the encoder's max_position_embeddings).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        raise TypeError(f"A fast tokenizer (with backend_tokenizer) is needed, got {type(tokenizer).__name__}")
    special = getattr(tokenizer, "special_tokens_map", {}) or {}
    config: dict[str, Any] = {k: str(special[k]) for k in SPECIAL_TOKENS if special.get(k) is not None}
    model_max = int(getattr(tokenizer, "model_max_length", 0) or 0)
    if max_length is not None and (model_max <= 0 or model_max > max_length):
        model_max = int(max_length)
    if 0 < model_max <= 10**9:  # the "unbounded" sentinel (1e30) is left out
        config["model_max_length"] = model_max
    for key in ("padding_side", "truncation_side"):
        if isinstance(getattr(tokenizer, key, None), str):
            config[key] = getattr(tokenizer, key)
    names = getattr(tokenizer, "model_input_names", None)
    if names:
        config["model_input_names"] = [str(n) for n in names]
    return {"tokenizer.json": backend.to_str(), "config": config}


def tokenizer_from_dict(d: Mapping[str, Any]) -> Any:
    """{"tokenizer.json": str, "config": {...}} -> PreTrainedTokenizerFast. CheckpointError if malformed."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if not isinstance(d, Mapping) or not isinstance(d.get("tokenizer.json"), str):
        found = sorted(map(str, d)) if isinstance(d, Mapping) else type(d).__name__
        raise CheckpointError(
            f"The checkpoint's tokenizer entry must hold 'tokenizer.json' (a JSON string); found {found}."
        )
    try:
        backend = Tokenizer.from_str(d["tokenizer.json"])
    except Exception as e:  # tokenizers raises its own Exception type for bad JSON
        raise CheckpointError(f"The checkpoint's tokenizer.json cannot be read: {e}") from e
    config = d.get("config") or {}
    if not isinstance(config, Mapping):
        raise CheckpointError(f"The checkpoint's tokenizer config must be a dict, found {type(config).__name__}.")
    kwargs: dict[str, Any] = {}
    for key in SPECIAL_TOKENS:
        token = config.get(key)
        if token is None:
            continue
        if backend.token_to_id(str(token)) is None:
            raise CheckpointError(f"The tokenizer's {key} {token!r} is not in its vocabulary.")
        kwargs[key] = str(token)
    for key in TOKENIZER_SETTINGS:
        if config.get(key) is not None:
            kwargs[key] = list(config[key]) if key == "model_input_names" else config[key]
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)


# -- checkpoint writing --------------------------------------------------------------------------
def checkpoint_dict(model: MultimodalClassifier, tokenizer: Any) -> dict[str, Any]:
    """The checkpoint as a dict of builtins and tensors (see the module docstring)."""
    model.config.tab_mean, model.config.tab_std = model.normalization()
    max_pos = model.encoder.config.max_position_embeddings
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()},
        "tokenizer": tokenizer_to_dict(tokenizer, max_length=max_pos),
    }


def save_checkpoint(model: MultimodalClassifier, tokenizer: Any, path: str | Path) -> Path:
    """Write the single-file checkpoint (loadable with torch.load(path, weights_only=True)).

    Written to a temporary file first and renamed, so a reader never sees a half-written checkpoint.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(checkpoint_dict(model, tokenizer), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
