"""Loader for the studio's multimodal classifier checkpoints (text + tabular, see studio.models.multimodal).

Accepted layouts (each a dict already read with `torch.load(..., weights_only=True)` by the dispatcher):
- native:    {"format": "onnx-studio/multimodal", "version": 1, "config", "state_dict", "tokenizer"}
- Lightning: {"state_dict": {"model.encoder...": ...}, "hyper_parameters": {...config...}} where the config
             is the hyper-parameters themselves or a dict under them (e.g. "config"); an optional
             "tokenizer" entry (top level or in hyper_parameters) in the native tokenizer layout.
- plain:     {"config": {...}, "state_dict": {...}} without the format marker.
State-dict keys may carry wrapper prefixes (model., module., _fsdp_wrapped_module., _orig_mod., ...):
they are normalised by `studio.sources.keys`.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from studio.errors import CheckpointError
from studio.models.multimodal import (
    ARCHITECTURE,
    FORMAT,
    VERSION,
    MultimodalClassifier,
    MultimodalConfig,
    tokenizer_from_dict,
)
from studio.sources.base import ATTENTION_MASK, INPUT_IDS, OBJECT, TABULAR, LoadedModel, LoadOptions, ModelInput, Source
from studio.sources.keys import SHOW, match_keys, normalize_keys

KIND = "multimodal"
_CONFIG_KEYS = ("config", "model_config", "multimodal_config", "hparams")  # searched first, in order


def _is_config(d: Any) -> bool:
    return isinstance(d, Mapping) and isinstance(d.get("encoder"), Mapping) and "labels" in d


def _find_config(obj: Mapping[str, Any]) -> tuple[Mapping[str, Any] | None, str]:
    """The multimodal config dict inside `obj` and where it was found ("config", "hyper_parameters.config")."""
    if _is_config(obj.get("config")):
        return obj["config"], "config"
    hp = obj.get("hyper_parameters")
    if not isinstance(hp, Mapping):
        return None, ""
    if _is_config(hp):
        return hp, "hyper_parameters"
    # breadth-first, two levels below hyper_parameters, preferred key names first
    frontier: list[tuple[str, Mapping[str, Any]]] = [("hyper_parameters", hp)]
    for _ in range(2):
        nxt: list[tuple[str, Mapping[str, Any]]] = []
        for where, d in frontier:
            keys = [k for k in _CONFIG_KEYS if k in d] + [k for k in d if k not in _CONFIG_KEYS]
            for k in keys:
                v = d[k]
                if _is_config(v):
                    return v, f"{where}.{k}"
                if isinstance(v, Mapping):
                    nxt.append((f"{where}.{k}", v))
        frontier = nxt
    return None, ""


def looks_like(obj: Any) -> bool:
    """True for a dict in one of the accepted layouts (a native dict is claimed even when malformed,
    so that `load` can say what is wrong with it)."""
    if not isinstance(obj, Mapping):
        return False
    if obj.get("format") == FORMAT:
        return True
    return "state_dict" in obj and _find_config(obj)[0] is not None


def sniff(source: Source, options: LoadOptions) -> bool:
    """What a file held, in one of the accepted layouts (see looks_like)."""
    return source.form == OBJECT and looks_like(source.obj)


def load(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    """The loader table's entry: `build` on the object the file held."""
    return build(source.obj, shown, max_params=options.max_params)


def python_name(column: str, taken: set[str]) -> str:
    """A valid, ASCII Python identifier for `column`, distinct from `taken` (which it is added to)."""
    name = re.sub(r"[^0-9A-Za-z_]", "_", str(column)).strip("_") or "field"
    if name[0].isdigit():
        name = "f_" + name
    if keyword.iskeyword(name):
        name += "_"
    base, n = name, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


@dataclass(frozen=True)
class MultimodalAdapter:
    """Named graph tensors -> the model's dict batch -> softmax probabilities (traceable)."""

    text_key: str
    mask_key: str
    fields: tuple[tuple[str, str], ...]  # (model batch key, graph input name)

    def __call__(self, module: torch.nn.Module, named: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        batch = {self.text_key: named[INPUT_IDS], self.mask_key: named[ATTENTION_MASK]}
        for key, name in self.fields:
            batch[key] = named[name]
        return (torch.softmax(module(batch), dim=-1),)


def _check_version(obj: Mapping[str, Any]) -> None:
    version = obj.get("version", VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"The checkpoint's 'version' must be an integer, found {version!r}.")
    if version > VERSION:
        raise CheckpointError(
            f"The checkpoint is {FORMAT} version {version}; this studio reads up to version {VERSION}.",
            hint="Upgrade ONNX Studio.",
        )


def _check_shapes(model: torch.nn.Module, state: Mapping[str, Any], config: MultimodalConfig) -> None:
    own = model.state_dict()
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"State dict entries are not tensors: {', '.join(repr(k) for k in not_tensors[:SHOW])}.")
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        listed = "; ".join(f"{k!r}: checkpoint {list(a)} vs config {list(b)}" for k, a, b in bad[:SHOW])
        more = f" and {len(bad) - SHOW} more" if len(bad) > SHOW else ""
        enc = config.encoder
        raise CheckpointError(
            f"{len(bad)} tensors do not fit the checkpoint's config: {listed}{more}.",
            hint=f"The config says vocab_size={enc.get('vocab_size')}, hidden_size={enc.get('hidden_size')}, "
            f"num_hidden_layers={enc.get('num_hidden_layers')}, tab_fields={config.tab_fields}, "
            f"labels={len(config.labels)}; the weights were trained with other values.",
        )


def _check_size(config: MultimodalConfig, state: Mapping[str, Any], path: str, max_params: int | None) -> None:
    """The model the config (its encoder settings, tabular widths, head) declares, counted on the meta
    device, must fit the bytes the state dict holds before it is built for real (see sources.sizing)."""
    from studio.sources import sizing

    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    held = sizing.state_dict_bytes(tensors, path)
    if config.tab_width > held:  # the model lays out tab_width floats in Python lists before any tensor
        raise CheckpointError(
            f"The multimodal config of {path} declares {config.tab_width:,} tabular features, "
            f"but the state dict holds only {held:,} bytes; refused before building the model."
        )
    try:
        sizing.check_declared(
            lambda: MultimodalClassifier(config),
            config_name=f"The multimodal config of {path}",
            held_bytes=held,
            held_name="its state dict",
            max_params=max_params or sizing.MAX_PARAMS_DEFAULT,
            sizes=sizing.config_sizes(config.encoder),
        )
    except CheckpointError:
        raise
    except (TypeError, ValueError) as e:  # BertConfig / BertModel reject the encoder settings
        raise CheckpointError(f"The multimodal config's encoder settings are invalid: {e}") from e


def build(obj: Any, path: str, *, max_params: int | None = None) -> LoadedModel:
    """Turn a checkpoint dict into a LoadedModel whose graph outputs class probabilities ("probs")."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"A multimodal checkpoint is a dict; {path} holds {type(obj).__name__}.")
    native = obj.get("format") == FORMAT
    if native:
        _check_version(obj)
    raw_config, where = _find_config(obj)
    if raw_config is None:
        if native and isinstance(obj.get("config"), Mapping):
            MultimodalConfig.from_dict(obj["config"])  # raises, naming what the config lacks
        raise CheckpointError(
            f"No multimodal config found in {path}; top-level keys: {sorted(map(str, obj))}.",
            hint="Expected 'config' (or 'hyper_parameters', possibly under a key such as 'config') "
            "holding a dict with at least 'encoder' and 'labels'.",
        )
    config = MultimodalConfig.from_dict(raw_config)
    raw_state = obj.get("state_dict")
    if not isinstance(raw_state, Mapping):
        raise CheckpointError(f"No 'state_dict' mapping in {path}; top-level keys: {sorted(map(str, obj))}.")

    _check_size(config, raw_state, path, max_params)
    try:
        model = MultimodalClassifier(config)
    except (TypeError, ValueError) as e:  # BertConfig / BertModel reject the encoder settings
        raise CheckpointError(f"The multimodal config's encoder settings are invalid: {e}") from e
    expected = list(model.state_dict().keys())
    # Training-framework dicts may hold extra modules (losses, EMA copies): those keys are ignored
    # and reported; a native checkpoint must fit exactly.
    state = normalize_keys(raw_state, expected, allow_unexpected=not native, what="the multimodal config")
    ignored = [] if native else match_keys(raw_state.keys(), expected).unexpected
    _check_shapes(model, state, config)
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"The weights cannot be loaded into the multimodal model: {e}") from e
    model.eval()

    tok_entry = obj.get("tokenizer")
    if tok_entry is None and isinstance(obj.get("hyper_parameters"), Mapping):
        tok_entry = obj["hyper_parameters"].get("tokenizer")
    tokenizer = tokenizer_from_dict(tok_entry) if tok_entry is not None else None

    taken = {INPUT_IDS, ATTENTION_MASK}
    inputs = [ModelInput(INPUT_IDS, INPUT_IDS), ModelInput(ATTENTION_MASK, ATTENTION_MASK)]
    pairs = []
    for column, width in config.tab_fields.items():
        name = python_name(column, taken)
        vocab = (config.tab_vocab or {}).get(column)
        inputs.append(
            ModelInput(name=name, kind=TABULAR, column=column, width=width, vocab=list(vocab) if vocab else None)
        )
        pairs.append((column, name))

    info: dict[str, Any] = {
        "architecture": ARCHITECTURE,
        "labels": list(config.labels),
        "text_field": config.text_field,
        "tabular_fields": dict(config.tab_fields),
        **({"categorical_fields": {k: list(v) for k, v in config.tab_vocab.items()}} if config.tab_vocab else {}),
        "layout": "native" if native else ("lightning" if where.startswith("hyper_parameters") else "plain"),
    }
    if native:
        info["format"] = f"{FORMAT} v{obj.get('version', VERSION)}"
    if ignored:
        info["ignored_keys"] = ignored[:20]
        info["ignored_key_count"] = len(ignored)
    if tokenizer is None:
        info["tokenizer_note"] = "the checkpoint carries no tokenizer"
    return LoadedModel(
        kind=KIND,
        path=str(path),
        module=model,
        adapter=MultimodalAdapter(config.text_key, config.mask_key, tuple(pairs)),
        inputs=inputs,
        output_names=["probs"],
        output_kinds={"probs": "probs"},
        tokenizer=tokenizer,
        info=info,
    )
