"""State-dict checkpoints of a Hugging Face backbone (+ an optional custom Linear head).

The weights come from torch.save(model.state_dict()) (.pt/.pth/.bin, read weights-only), a Lightning
.ckpt ({"state_dict": ...}), a consolidated DCP checkpoint, or a single .safetensors file. The
architecture comes from the backbone's config.json, found (in this order) at ConvertSpec.config
(`--config`: a config.json or a folder holding one), or beside the weights (same folder / same zip).
The tokenizer is read from the config's folder or the weights' folder.

Keys may carry training-wrapper prefixes (module., model., _fsdp_wrapped_module., _orig_mod., ...,
nested too) and the backbone may sit under any attribute (model., backbone., encoder., bert., ...):
the backbone's keys are located by their suffixes, the rest must be one Linear layer (the head).
When the config's `architectures` names a task model (…ForSequenceClassification, …) and the weights
fit that class exactly, it is loaded as such (its own head), unless a head is chosen explicitly.
Here the state dict and its config are found; sources/backbone.py builds the model from them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from studio.errors import CheckpointError, first_line
from studio.sources import hf
from studio.sources.backbone import load_state
from studio.sources.base import OBJECT, LoadedModel, LoadOptions, Source

KIND = "state-dict"

# Where a state dict sits inside a training checkpoint dict, searched in this order.
CONTAINER_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "module",
    "net",
    "network",
    "weights",
    "params",
    "model_state",
)


# ------------------------------------------------------------------------------------------ finding


def _is_tensor_dict(obj: Any) -> bool:
    """Every key a string, every value a tensor (or None, e.g. an empty `_extra_state`), at least one tensor."""
    return (
        isinstance(obj, Mapping)
        and all(isinstance(k, str) for k in obj)
        and all(v is None or isinstance(v, torch.Tensor) for v in obj.values())
        and any(isinstance(v, torch.Tensor) for v in obj.values())
    )


def find_state_dict(obj: Any, _where: str = "", _depth: int = 0) -> tuple[dict[str, torch.Tensor], str] | None:
    """The mapping of parameter names to tensors inside `obj`, and where it was ("", "state_dict", ...).

    Non-tensor entries of that mapping (e.g. `_extra_state` None) are dropped."""
    if not isinstance(obj, Mapping) or _depth > 3:
        return None
    if _is_tensor_dict(obj):
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, _where or "top level"
    keys = [k for k in CONTAINER_KEYS if k in obj]
    for k in keys:
        found = find_state_dict(obj[k], f"{_where}.{k}" if _where else k, _depth + 1)
        if found:
            return found
    return None


def describe_object(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = list(map(str, obj))
        more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
        return f"a dict with keys {', '.join(keys[:8])}{more}"
    return type(obj).__name__


# ------------------------------------------------------------------------------------------ config


def _config_file(given: str | None, folders: list[Path], shown: str) -> Path | None:
    """--config (a config.json or a folder holding one), else a config.json in one of the folders."""
    if given:
        p = Path(str(given)).expanduser()
        if p.is_dir():
            if not (p / "config.json").is_file():
                raise CheckpointError(f"--config {given}: the folder holds no config.json.")
            return p / "config.json"
        if not p.is_file():
            raise CheckpointError(f"--config {given} does not exist.")
        return p
    for folder in folders:
        if folder is not None and (folder / "config.json").is_file():
            return folder / "config.json"
    return None


def load_config(path: Path):
    """A transformers config from a config.json (never runs remote code)."""
    from transformers import AutoConfig

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path.name} is not a readable JSON config: {e}") from e
    if not isinstance(data, dict) or "model_type" not in data:
        raise CheckpointError(
            f"{path} is not a Hugging Face config.json (it has no 'model_type').",
            hint="Use the config.json of the backbone the weights were trained from.",
        )
    try:
        src = path.parent if path.name == "config.json" else path
        return AutoConfig.from_pretrained(str(src), trust_remote_code=False, local_files_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path} is not a config transformers knows (model_type {data.get('model_type')!r}): {e}"
        ) from e


def find_tokenizer(folders: list[Path]):
    for folder in folders:
        if folder is not None and folder.is_dir():
            tok = hf.load_tokenizer(folder)
            if tok is not None:
                return tok
    return None


def sniff(source: Source, options: LoadOptions) -> bool:
    """What a file held is, or holds, a mapping of parameter names to tensors."""
    return source.form == OBJECT and find_state_dict(source.obj) is not None


def load(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    """A weights-only object (a state dict or a training checkpoint dict holding one) + its config, looked
    for at --config or in the source's folders."""
    obj, folders = source.obj, source.folders
    found = find_state_dict(obj)
    if found is None:
        raise CheckpointError(
            f"{shown} holds {describe_object(obj)}, which is not a checkpoint kind the studio "
            "knows (no state dict of tensors found)."
        )
    sd, where = found
    info = dict(source.info)
    info["state_dict_at"] = where
    if isinstance(obj, Mapping) and ("pytorch-lightning_version" in obj or "hyper_parameters" in obj):
        info.setdefault("layout", "lightning")
    cfg_path = _config_file(options.config, folders, shown)
    if cfg_path is None:
        sample = ", ".join(repr(k) for k in list(sd)[:3])
        raise CheckpointError(
            f"{shown} holds a state dict of {len(sd)} tensors (keys like {sample}) but no architecture: "
            "the studio needs the backbone's config.json to rebuild the model.",
            hint="Put config.json (and the tokenizer files) beside the weights or in the same .zip, or pass "
            "--config path/to/config.json (or the model folder).",
        )
    config = load_config(cfg_path)
    info["config"] = str(cfg_path) if options.config else cfg_path.name
    _check_size(sd, config, info["config"], shown, options.max_params)
    tokenizer = find_tokenizer([cfg_path.parent] + [f for f in folders if f != cfg_path.parent])
    return load_state(sd, config, tokenizer, options.head, shown, info)


def _check_size(sd: dict[str, torch.Tensor], config, config_name: str, shown: str, max_params: int | None) -> None:
    """The backbone the config declares, counted on the meta device, must fit the bytes the state dict holds
    (and the operator's --max-params) before the real model is built (see sources.sizing)."""
    import transformers

    from studio.sources import sizing

    try:
        sizing.check_declared(
            lambda: transformers.AutoModel.from_config(config, attn_implementation="eager"),
            config_name=config_name,
            held_bytes=sizing.state_dict_bytes(sd, shown),
            held_name=shown,
            max_params=max_params or sizing.MAX_PARAMS_DEFAULT,
            sizes=sizing.config_sizes(config),
        )
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"Cannot build a {config.model_type} model from the config: {e}") from e


def read_safetensors(p: Path, shown: str) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file (no code can run: the format holds only a JSON header + bytes)."""
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(p), device="cpu"))
    except Exception as e:
        raise CheckpointError(
            f"{shown} is not a readable .safetensors file (truncated or corrupted?): {first_line(e)}"
        ) from e
