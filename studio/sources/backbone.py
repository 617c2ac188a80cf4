"""A state dict + a transformers config -> the model it belongs to (`load_state`).

The config's own task model (…ForSequenceClassification, …) when no head is chosen and the weights fit it
exactly; else the config's backbone, located among the keys by their suffixes (wrapper prefixes and any
attribute the backbone sat under ignored: keys.locate_prefix), alone (the encoder's hidden states) or with
the one Linear layer the other keys hold as its head (--head says what the head reads). Weights that do not
fit are refused with the keys or shapes at fault and the config values to check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from studio.errors import CheckpointError
from studio.models.heads import HEAD_HELP, BackboneWithHead, has_pooler
from studio.sources import hf
from studio.sources.base import LoadedModel
from studio.sources.keys import SHOW, KeyMatch, closest_rename, describe_mismatch, locate_prefix, match_keys, unwrap

KIND = "state-dict"
MIN_COVERAGE = 0.5  # share of the backbone's tensors the checkpoint must hold to be called that backbone


def load_state(
    sd: dict[str, torch.Tensor], config, tokenizer, head: str | None, shown: str, info: dict[str, Any]
) -> LoadedModel:
    """Build the model the state dict `sd` belongs to: the config's task model, or backbone + head."""
    _float(sd, shown)
    if head is not None and head not in HEAD_HELP:
        raise CheckpointError(f"Head {head!r} is not one of {', '.join(HEAD_HELP)}.")
    if head is None:
        loaded = _try_task_model(sd, config, tokenizer, shown, info)
        if loaded is not None:
            return loaded
    backbone, prefix, state, rest = _match_backbone(sd, config, head, shown)
    base_info = {**info, "model_type": config.model_type, "backbone_prefix": prefix or "(top level)"}
    if not rest:
        return _encoder_only(backbone, state, config, tokenizer, head, shown, base_info)
    return _with_head(backbone, state, rest, config, tokenizer, head, shown, prefix, base_info)


def _try_task_model(sd: dict[str, torch.Tensor], config, tokenizer, shown: str, info: dict) -> LoadedModel | None:
    """The config's own task class (…ForSequenceClassification, …) when the weights fit it exactly."""
    archs = list(getattr(config, "architectures", None) or [])
    if not archs:
        return None
    try:
        auto_name, outputs, out_kind = hf.choose_task(config)[0]
    except CheckpointError:
        return None
    if auto_name == "AutoModel":
        return None
    model = _build(auto_name, config)
    own = model.state_dict()
    match = match_keys(sd.keys(), own.keys())
    if match.missing or match.unexpected:
        return None
    state = {t: sd[s] for t, s in match.mapping.items()}
    _check_shapes(own, state, config, names=match.mapping)
    model.load_state_dict(state, strict=True)
    model = model.float().eval().to("cpu")
    return LoadedModel(
        kind=KIND,
        path=shown,
        module=model,
        adapter=hf.make_adapter(list(outputs)),
        inputs=hf.text_inputs_for(model, config, tokenizer),
        output_names=list(outputs),
        output_kinds={o: out_kind for o in outputs},
        tokenizer=tokenizer,
        task=auto_name.replace("AutoModelFor", ""),
        info={
            **info,
            "architecture": type(model).__name__,
            "model_type": config.model_type,
            "labels": _labels(config, int(getattr(config, "num_labels", 0) or 0))
            if auto_name.endswith("SequenceClassification")
            else None,
        },
    )


def _match_backbone(sd: dict[str, torch.Tensor], config, head: str | None, shown: str):
    """The config's backbone and the checkpoint's weights for it: (backbone, prefix, state, rest), where rest
    holds the keys the backbone does not take (a head's). A backbone the weights do not fit is an error."""
    backbone = _build("AutoModel", config)
    own = backbone.state_dict()
    keys = list(sd)
    prefix, mapping = locate_prefix(keys, list(own))
    missing = [k for k in own if k not in mapping]
    if missing and all(k.startswith("pooler.") for k in missing) and has_pooler(backbone):
        if head == "pooled":
            raise CheckpointError(
                f"{shown}: --head pooled needs the backbone's pooler weights, which the checkpoint does not hold.",
                hint="Use --head sequence (first token).",
            )
        backbone = _build("AutoModel", config, add_pooling_layer=False)
        own = backbone.state_dict()
        missing = [k for k in own if k not in mapping]
    used = set(mapping.values())
    lead = prefix + "." if prefix else ""
    children = {name for name, _ in backbone.named_children()}
    rest = {k: v for k, v in sd.items() if k not in used}
    stray = [k for k in rest if unwrap(k).startswith(lead) and unwrap(k)[len(lead) :].split(".")[0] in children]
    if missing or stray or len(mapping) < MIN_COVERAGE * len(own):
        head_keys = _linear_keys({k: v for k, v in rest.items() if k not in stray})
        unexpected = [k for k in rest if k not in head_keys] if mapping else keys
        match = KeyMatch(
            mapping={}, missing=[lead + k for k in missing] if mapping else list(own), unexpected=unexpected
        )
        what = f"a {config.model_type} backbone built from the config"
        message = describe_mismatch(match, what)
        if "Closest match" not in message:
            rename = closest_rename(match.missing, match.unexpected)
            if rename:
                message += f" Closest match: {rename}."
        raise CheckpointError(
            message + (f" (backbone found under {prefix!r})" if prefix else ""),
            hint=_config_hint(config)
            if mapping
            else "Check that the config.json belongs to the model the weights were saved from.",
        )
    state = {k: sd[s] for k, s in mapping.items()}
    _check_shapes(own, state, config, names=mapping)
    for k in stray:
        rest.pop(k, None)
    return backbone, prefix, state, rest


def _encoder_only(
    backbone, state: dict[str, torch.Tensor], config, tokenizer, head: str | None, shown: str, base_info: dict[str, Any]
) -> LoadedModel:
    """A checkpoint holding the backbone alone: the encoder's hidden states."""
    if head is not None:
        raise CheckpointError(
            f"{shown}: --head {head} was chosen, but the checkpoint holds only the backbone (no head weights).",
            hint="Leave --head out to export the encoder's hidden states.",
        )
    backbone.load_state_dict(state, strict=True)
    backbone = backbone.float().eval().to("cpu")
    outputs = list(hf.ENCODER_OUTPUTS)
    return LoadedModel(
        kind=KIND,
        path=shown,
        module=backbone,
        adapter=hf.make_adapter(outputs),
        inputs=hf.text_inputs_for(backbone, config, tokenizer),
        output_names=outputs,
        output_kinds={o: "hidden" for o in outputs},
        tokenizer=tokenizer,
        task="encoder",
        info={**base_info, "architecture": type(backbone).__name__, "labels": None},
    )


def _with_head(
    backbone,
    state: dict[str, torch.Tensor],
    rest: dict[str, torch.Tensor],
    config,
    tokenizer,
    head: str | None,
    shown: str,
    prefix: str,
    base_info: dict[str, Any],
) -> LoadedModel:
    """Backbone + the checkpoint's Linear head, reading what --head says."""
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    mod, weight, bias = _head_from(rest, shown)
    num_labels, in_features = int(weight.shape[0]), int(weight.shape[1])
    if head is None:
        raise CheckpointError(
            f"{shown}: the checkpoint holds a {config.model_type} backbone (under {prefix!r}) and a Linear head "
            f"{mod!r} ({in_features} -> {num_labels}); say what the head reads with --head "
            f"{' | '.join(_choosable())}.",
            hint="; ".join(f"{k}: {HEAD_HELP[k]}" for k in _choosable()),
        )
    if in_features != hidden:
        raise CheckpointError(
            f"{shown}: the head {mod!r} takes {in_features} features but the config's hidden_size is {hidden}.",
            hint=_config_hint(config),
        )
    if head == "pooled" and not has_pooler(backbone):
        raise CheckpointError(
            f"{shown}: --head pooled needs a backbone with a pooler; {config.model_type} has none.",
            hint="Use --head sequence (first token).",
        )
    model = BackboneWithHead(backbone, head, num_labels, in_features, bias=bias is not None)
    full = {f"backbone.{k}": v for k, v in state.items()}
    full["head.weight"] = weight
    if bias is not None:
        full["head.bias"] = bias
    try:
        model.load_state_dict(full, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{shown}: the weights cannot be loaded into backbone + head: {e}") from e
    model = model.float().eval().to("cpu")
    return LoadedModel(
        kind=KIND,
        path=shown,
        module=model,
        adapter=_logits_adapter,
        inputs=hf.text_inputs_for(backbone, config, tokenizer),
        output_names=["logits"],
        output_kinds={"logits": "logits"},
        tokenizer=tokenizer,
        task=f"{head}-classification" if head != "token" else "token-classification",
        info={
            **base_info,
            "architecture": f"{type(backbone).__name__} + Linear head",
            "head": head,
            "head_module": mod,
            "num_labels": num_labels,
            "labels": _labels(config, num_labels) if head != "token" else None,
        },
    )


def _head_from(rest: dict[str, torch.Tensor], shown: str) -> tuple[str, torch.Tensor, torch.Tensor | None]:
    """The one Linear layer among the keys outside the backbone: (module path, weight, bias)."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in rest.items():
        mod, _, leaf = unwrap(k).rpartition(".")
        groups.setdefault(mod, {})[leaf] = v
    linear = [
        (m, g)
        for m, g in groups.items()
        if set(g) <= {"weight", "bias"}
        and "weight" in g
        and g["weight"].dim() == 2
        and ("bias" not in g or tuple(g["bias"].shape) == (g["weight"].shape[0],))
    ]
    if len(groups) != 1 or len(linear) != 1:
        listed = ", ".join(f"{k!r} {list(v.shape)}" for k, v in list(rest.items())[: SHOW + 3])
        raise CheckpointError(
            f"{shown}: besides the backbone, the checkpoint holds {len(rest)} tensors in {len(groups)} "
            f"module(s) ({listed}); the built-in heads are one Linear layer on the backbone's hidden states.",
            hint="Register an operator plugin for this architecture (docs/checkpoints.md, 'Operator plugins'), or "
            "export a Hugging Face task model (save_pretrained).",
        )
    mod, g = linear[0]
    return mod, g["weight"], g.get("bias")


def _linear_keys(rest: Mapping[str, torch.Tensor]) -> set[str]:
    """Keys of the single Linear-shaped module among `rest` (the likely head), or an empty set."""
    groups: dict[str, list[str]] = {}
    for k in rest:
        groups.setdefault(unwrap(k).rpartition(".")[0], []).append(k)
    linear = [
        ks
        for ks in groups.values()
        if {unwrap(k).rpartition(".")[2] for k in ks} <= {"weight", "bias"}
        and any(unwrap(k).endswith("weight") and rest[k].dim() == 2 for k in ks)
    ]
    return set(linear[0]) if len(linear) == 1 else set()


def _choosable() -> list[str]:
    """Built-in heads the options (ConvertSpec / --head) accept."""
    try:
        from studio.spec import HEAD_NAMES
    except ImportError:
        return list(HEAD_HELP)
    return [h for h in HEAD_HELP if h in HEAD_NAMES] or list(HEAD_HELP)


def _logits_adapter(module, named):
    return (module(**named),)


def _build(auto_name: str, config, **kwargs):
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        return getattr(transformers, auto_name).from_config(config, attn_implementation="eager", **kwargs)
    except Exception as e:
        raise CheckpointError(f"Cannot build a {config.model_type} model from the config: {e}") from e


def _labels(config, n: int) -> list | None:
    id2label = getattr(config, "id2label", None) or {}
    if len(id2label) != n:
        return None
    labels = [id2label[i] for i in sorted(id2label)]
    return None if labels == [f"LABEL_{i}" for i in range(n)] else labels


def _check_shapes(
    own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], config, names: Mapping[str, str] | None = None
) -> None:
    bad = [
        ((names or {}).get(k, k), tuple(v.shape), tuple(own[k].shape))
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if bad:
        raise CheckpointError(_shape_errors(bad), hint=_config_hint(config))


def _shape_errors(pairs: list[tuple[str, tuple, tuple]]) -> str:
    listed = "; ".join(f"{k!r}: checkpoint {list(a)} vs config {list(b)}" for k, a, b in pairs[:SHOW])
    more = f" and {len(pairs) - SHOW} more" if len(pairs) > SHOW else ""
    return f"{len(pairs)} tensors do not fit the config: {listed}{more}."


def _config_hint(config) -> str:
    names = (
        "model_type",
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "intermediate_size",
        "max_position_embeddings",
        "type_vocab_size",
    )
    vals = ", ".join(f"{n}={getattr(config, n)}" for n in names if getattr(config, n, None) is not None)
    return (
        f"The config says {vals}; the weights were trained with other values. Use the config.json of "
        "the model the weights were saved from."
    )


def _float(state: Mapping[str, torch.Tensor], shown: str) -> None:
    odd = [k for k, v in state.items() if v.is_complex() or v.dtype in (torch.bool,) or v.is_quantized]
    if odd:
        raise CheckpointError(
            f"{shown}: tensors {', '.join(map(repr, odd[:SHOW]))} have dtypes the studio cannot "
            "load into a float32 model (quantized / complex)."
        )
