"""sentence-transformers folders: modules.json declares Transformer -> Pooling -> Dense... -> Normalize.

The whole declared pipeline is exported (studio.models.sentence, plain torch; sentence_transformers is
never imported): graph outputs `sentence_embedding` [batch, dim] and `token_embeddings` [batch, seq, hidden].
Read from the folder, never executed: modules.json, each module's config.json, Dense weights
(.safetensors, or pytorch_model.bin read weights-only), sentence_bert_config.json and
config_sentence_transformers.json (prompts). Every path a module names must stay inside the folder.

A module the studio cannot build is a CheckpointError naming it. With an explicit `--task
feature-extraction` (or another --task head) the folder's transformer is loaded as a plain Hugging Face
folder instead, and `info["warnings"]` says which modules were dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from studio.errors import CheckpointError
from studio.models.sentence import LEGACY_POOLING_KEYS, POOLING_MODES, Dense, Normalize, Pooling, SentenceEncoder
from studio.sources.base import ATTENTION_MASK, FOLDER, LoadedModel, LoadOptions, ModelInput, Source

KIND = "sentence-transformers"
MODULES_FILE = "modules.json"
OUTPUTS = ["sentence_embedding", "token_embeddings"]
BUILT = ("Transformer", "Pooling", "Dense", "Normalize", "Dropout")
# activation functions a Dense config may name (torch.nn classes built without arguments; nothing imported)
ACTIVATIONS = ("Tanh", "Identity", "ReLU", "GELU", "Sigmoid", "SiLU", "Softsign", "Softplus", "Mish", "ELU")
DENSE_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def is_sbert_folder(folder: Path) -> bool:
    return folder.is_dir() and (folder / MODULES_FILE).is_file()


def sniff(source: Source, options: LoadOptions) -> bool:
    """A folder whose modules.json declares a sentence-transformers pipeline."""
    return source.form == FOLDER and is_sbert_folder(source.path)


def load(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    """The loader table's entry: the declared pipeline, or the bare transformer for another --task."""
    return load_for_task(source.path, shown, options.task, options.max_length, max_params=options.max_params)


def _read_json(path: Path, shown: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{shown} is not readable JSON: {e}") from e


def _inside(folder: Path, rel: Any, what: str) -> Path:
    """folder/rel, refused when rel is not a relative path that stays inside the folder."""
    if not isinstance(rel, str):
        raise CheckpointError(f"{MODULES_FILE}: {what} has path {rel!r}, not a folder name.")
    root = folder.resolve()
    target = (folder / rel).resolve()
    if Path(rel).is_absolute() or not target.is_relative_to(root):
        raise CheckpointError(
            f"{MODULES_FILE}: {what} has path {rel!r}, which points outside the model folder; refused."
        )
    return target


def read_modules(folder: Path) -> list[dict[str, Any]]:
    """modules.json as a list of {name, type (class name), path (resolved, inside the folder)}."""
    data = _read_json(folder / MODULES_FILE, MODULES_FILE)
    if not isinstance(data, list) or not data or not all(isinstance(m, dict) for m in data):
        raise CheckpointError(f"{MODULES_FILE} must be a non-empty list of modules ({{idx, name, path, type}}).")
    out = []
    for i, m in enumerate(sorted(data, key=lambda m: m.get("idx", 0) if isinstance(m.get("idx", 0), int) else 0)):
        full = m.get("type")
        if not isinstance(full, str) or not full:
            raise CheckpointError(f"{MODULES_FILE}: module {i} has no type.")
        cls = full.rsplit(".", 1)[-1]
        rel = m.get("path", "")
        where = f", folder {rel}" if isinstance(rel, str) and rel else ""
        label = f"module {m.get('name', i)!s} ({full}{where})"
        out.append(
            {
                "name": str(m.get("name", i)),
                "type": full,
                "cls": cls if full.startswith("sentence_transformers.") else None,
                "path": _inside(folder, m.get("path", ""), label),
                "label": label,
                "root": folder.resolve(),
            }
        )
    return out


def _file(module: dict[str, Any], name: str) -> Path:
    """A file of a module's folder; one that links outside the model folder is refused."""
    p = module["path"] / name
    if p.exists() and not p.resolve().is_relative_to(module["root"]):
        raise CheckpointError(f"{module['label']}: {name} links outside the model folder; refused.")
    return p


def _config(module: dict[str, Any], required: bool) -> dict[str, Any]:
    path = _file(module, "config.json")
    if not path.is_file():
        if required:
            raise CheckpointError(f"{module['label']}: {path.name} is missing in its folder.")
        return {}
    data = _read_json(path, f"{module['label']} config.json")
    if not isinstance(data, dict):
        raise CheckpointError(f"{module['label']}: config.json is not an object.")
    return data


def pooling_modes(cfg: dict[str, Any], label: str) -> tuple[str, ...]:
    """The modes of a Pooling config: `pooling_mode` (a name or a list) or the older boolean keys."""
    mode = cfg.get("pooling_mode")
    if mode is not None:
        modes = (mode,) if isinstance(mode, str) else tuple(mode) if isinstance(mode, (list, tuple)) else None
        if not modes or any(m not in POOLING_MODES for m in modes):
            raise CheckpointError(f"{label}: pooling_mode {mode!r} is not one of {', '.join(POOLING_MODES)}.")
        return modes
    modes = tuple(m for key, m in LEGACY_POOLING_KEYS.items() if cfg.get(key))
    return modes or ("mean",)  # sentence-transformers' default


def _pooling(module: dict[str, Any], hidden: int, info: dict[str, Any]) -> Pooling:
    cfg = _config(module, required=True)
    dim = cfg.get("embedding_dimension", cfg.get("word_embedding_dimension"))
    if dim is not None and dim != hidden:
        raise CheckpointError(
            f"{module['label']}: its config says embedding dimension {dim}, but the transformer's "
            f"hidden size is {hidden}."
        )
    modes = pooling_modes(cfg, module["label"])
    info["pooling"] = "+".join(modes)
    info["include_prompt"] = bool(cfg.get("include_prompt", True))
    return Pooling(modes)


def _activation(name: Any, label: str) -> torch.nn.Module:
    if name is None:
        return torch.nn.Tanh()  # sentence-transformers' default
    cls = str(name).rsplit(".", 1)[-1]
    if not str(name).startswith("torch.nn.") or cls not in ACTIVATIONS:
        raise CheckpointError(
            f"{label}: activation function {name!r} is not one the studio builds (torch.nn {', '.join(ACTIVATIONS)})."
        )
    return getattr(torch.nn, cls)()


def _dense_weights(module: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    from studio.sources.statedict import read_safetensors
    from studio.sources.weights import read_weights_only

    for name in DENSE_WEIGHTS:
        p = _file(module, name)
        if p.is_file():
            shown = f"{module['label']} {name}"
            state = read_safetensors(p, shown) if name.endswith(".safetensors") else read_weights_only(p, shown)
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise CheckpointError(f"{shown} does not hold a dict of tensors.")
            return state, name
    raise CheckpointError(f"{module['label']}: no weights ({' or '.join(DENSE_WEIGHTS)}) in its folder.")


def _dense(module: dict[str, Any], widths: dict[str, int]) -> Dense:
    """A Dense module; widths: the size of each feature it may read (sentence_embedding so far, token_embeddings)."""
    label = module["label"]
    cfg = _config(module, required=True)
    try:
        n_in, n_out = int(cfg["in_features"]), int(cfg["out_features"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{label}: config.json needs integer in_features and out_features.") from e
    source = cfg.get("module_input_name") or "sentence_embedding"
    if source not in widths:
        raise CheckpointError(f"{label}: module_input_name {source!r} is not one of {', '.join(widths)}.")
    if n_in != widths[source]:
        raise CheckpointError(f"{label}: in_features is {n_in}, but {source} has {widths[source]} values there.")
    bias, residual = bool(cfg.get("bias", True)), bool(cfg.get("use_residual", False))
    dense = Dense(
        n_in,
        n_out,
        bias,
        _activation(cfg.get("activation_function"), label),
        source,
        cfg.get("module_output_name"),
        residual,
    )
    if dense.output_name not in widths:
        raise CheckpointError(f"{label}: module_output_name {dense.output_name!r} is not one of {', '.join(widths)}.")
    state, file = _dense_weights(module)
    expected = {k: v.shape for k, v in dense.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} (config: {tuple(s)})"
        for k, s in expected.items()
        if k in state and tuple(state[k].shape) != tuple(s)
    ]
    if missing or unexpected or wrong:
        parts = (
            ([f"missing {', '.join(missing)}"] if missing else [])
            + ([f"unexpected {', '.join(unexpected)}"] if unexpected else [])
            + ([f"wrong shape {', '.join(wrong)}"] if wrong else [])
        )
        raise CheckpointError(f"{label}: its weights ({file}) do not fit its config.json ({'; '.join(parts)}).")
    dense.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    widths[dense.output_name] = n_out
    return dense


def _normalize(module: dict[str, Any]) -> Normalize:
    cfg = _config(module, required=False)
    return Normalize(cfg.get("module_input_name") or "sentence_embedding", cfg.get("module_output_name"))


def _prompt_warning(folder: Path, info: dict[str, Any]) -> str | None:
    p = folder / "config_sentence_transformers.json"
    cfg = _read_json(p, p.name) if p.is_file() else {}
    default = cfg.get("default_prompt_name") if isinstance(cfg, dict) else None
    if not default:
        return None
    prompt = (cfg.get("prompts") or {}).get(default, "") if isinstance(cfg.get("prompts"), dict) else ""
    info["default_prompt"] = {"name": default, "text": prompt}
    return (
        f"config_sentence_transformers.json sets the default prompt {default!r} ({prompt!r}); the graph embeds "
        "the text as given, like encode(..., prompt_name=None): prepend the prompt to the text yourself"
        + (
            ""
            if info.get("include_prompt", True)
            else " (this model's pooling would exclude the prompt tokens, "
            "include_prompt=false; the graph pools every real token)"
        )
        + "."
    )


def unbuildable(modules: list[dict[str, Any]]) -> list[str]:
    """Labels of the modules the studio cannot build (other types, or not sentence-transformers' own)."""
    return [m["label"] for m in modules if m["cls"] not in BUILT]


def dropped_warning(modules: list[dict[str, Any]], task: str) -> str | None:
    """With an explicit --task other than sentence-embedding: which declared modules are not exported."""
    dropped = [m["label"] for m in modules if m["cls"] != "Transformer"]
    if not dropped:
        return None
    return (
        f"--task {task}: the sentence-transformers modules after the transformer were dropped "
        f"({', '.join(dropped)}); the graph is the transformer alone"
        + (
            " (its token embeddings), not the sentence embedding."
            if task == "feature-extraction"
            else f" with a {task} head, not the sentence embedding."
        )
    )


def load_for_task(
    folder: Path, shown: str, task: str, max_length: int | None = None, *, max_params: int | None = None
) -> LoadedModel:
    """sources.load's entry: auto and sentence-embedding build the pipeline, another --task the bare model.

    max_length: the conversion's --max-length, compared with the folder's max_seq_length (a warning)."""
    if task in ("auto", "sentence-embedding"):
        why = (
            f"{MODULES_FILE} declares a sentence-transformers pipeline"
            if task == "auto"
            else "--task sentence-embedding"
        )
        loaded = load_pipeline(folder, shown, "sentence-embedding", why, max_params=max_params)
    else:
        loaded = load_bare(folder, shown, task, max_params=max_params)
    st_max = _max_seq_length(folder)
    if st_max is not None:
        loaded.info["max_seq_length"] = st_max
        if max_length is not None and int(max_length) != st_max:
            loaded.info["warnings"] = [
                *loaded.info.get("warnings", []),
                (
                    f"sentence_bert_config.json truncates at max_seq_length {st_max} tokens, this conversion at "
                    f"--max-length {max_length}: texts longer than {min(st_max, int(max_length))} tokens are embedded "
                    f"differently than sentence-transformers would; pass --max-length {st_max} to match it (the graph "
                    "itself takes any length up to the model's positions)."
                ),
            ]
    return loaded


def _max_seq_length(folder: Path) -> int | None:
    p = folder / "sentence_bert_config.json"
    data = _read_json(p, p.name) if p.is_file() else None
    value = data.get("max_seq_length") if isinstance(data, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def load_bare(folder: Path, shown: str, task: str, *, max_params: int | None = None) -> LoadedModel:
    """An explicit --task other than sentence-embedding: the folder's transformer through the Hugging Face
    loader with that head, and a warning naming the modules that were dropped."""
    from studio.sources import hf

    modules = read_modules(folder)
    tf_dir = next((m["path"] for m in modules if m["cls"] == "Transformer"), folder)
    if not hf.is_hf_folder(tf_dir):
        raise CheckpointError(f"{shown}: the Transformer module's folder has no config.json.")
    loaded = hf.load_folder(tf_dir, shown, task=task, max_params=max_params)
    warning = dropped_warning(modules, task)
    if warning:
        loaded.info["warnings"] = [*loaded.info.get("warnings", []), warning]
        loaded.info["dropped_modules"] = [m["label"] for m in modules if m["cls"] != "Transformer"]
    return loaded


def load_pipeline(folder: Path, shown: str, task: str, reason: str, *, max_params: int | None = None) -> LoadedModel:
    """Build the whole pipeline modules.json declares. `reason`: why this task was chosen (for the report)."""
    from studio.sources import hf

    modules = read_modules(folder)
    bad = unbuildable(modules)
    if bad:
        raise CheckpointError(
            f"{shown}: the studio cannot build the sentence-transformers module(s) {', '.join(bad)} declared in "
            f"{MODULES_FILE} (it builds {', '.join(BUILT)}).",
            hint="Use --task feature-extraction to export the bare transformer (its token embeddings) instead.",
        )
    if modules[0]["cls"] != "Transformer" or sum(m["cls"] == "Transformer" for m in modules) != 1:
        raise CheckpointError(
            f"{shown}: {MODULES_FILE} must start with one sentence_transformers Transformer module "
            f"(found {', '.join(m['cls'] for m in modules)})."
        )
    tf_dir = modules[0]["path"]
    if not hf.is_hf_folder(tf_dir):
        raise CheckpointError(
            f"{shown}: the Transformer module's folder {modules[0]['path'].name or '.'} has no config.json."
        )
    base = hf.load_folder(tf_dir, shown, task="feature-extraction", max_params=max_params)
    config = base.module.config
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "dim", 0) or getattr(config, "d_model", 0))
    info: dict[str, Any] = {}
    steps: list[torch.nn.Module] = []
    widths = {"token_embeddings": hidden}  # size of each feature so far
    for m in modules[1:]:
        if m["cls"] == "Pooling":
            pooling = _pooling(m, hidden, info)
            steps.append(pooling)
            widths["sentence_embedding"] = hidden * len(pooling.modes)
        elif m["cls"] == "Dense":
            steps.append(_dense(m, widths))
        elif m["cls"] == "Normalize":
            normalize = _normalize(m)
            steps.append(normalize)
            if normalize.input_name not in widths or normalize.output_name not in widths:
                raise CheckpointError(
                    f"{m['label']}: it normalises {normalize.input_name!r}, which is not one of "
                    f"{', '.join(widths)} at that point."
                )
        # Dropout: identity at inference
    if "sentence_embedding" not in widths or not any(isinstance(s, Pooling) for s in steps):
        raise CheckpointError(
            f"{shown}: {MODULES_FILE} declares no Pooling module, so there is no sentence embedding.",
            hint="Use --task feature-extraction to export the token embeddings.",
        )
    takes = tuple(i.name for i in base.inputs)
    module = SentenceEncoder(base.module, steps, takes).eval()
    inputs = list(base.inputs)
    if not any(i.kind == ATTENTION_MASK for i in inputs):  # the pooling needs it even if the model does not
        inputs.insert(1, ModelInput(ATTENTION_MASK, ATTENTION_MASK))
    warnings = [w for w in [_prompt_warning(folder, info)] if w]
    return LoadedModel(
        kind="sentence-transformers",
        path=shown,
        module=module,
        adapter=lambda mod, named: mod(**named),
        inputs=inputs,
        output_names=list(OUTPUTS),
        output_kinds={"sentence_embedding": "embedding", "token_embeddings": "hidden"},
        tokenizer=base.tokenizer,
        task=task,
        info={
            "architecture": base.info.get("architecture"),
            "model_type": base.info.get("model_type"),
            "task_reason": reason,
            "modules": [m["type"].rsplit(".", 1)[-1] for m in modules],
            "embedding_dimension": widths["sentence_embedding"],
            **info,
            **({"warnings": warnings} if warnings else {}),
        },
    )
