"""Hugging Face model folders: config.json + weights (safetensors / weights-only .bin) + tokenizer."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from studio.errors import CheckpointError
from studio.sources.base import (
    ATTENTION_MASK,
    FOLDER,
    INPUT_IDS,
    TOKEN_TYPE_IDS,
    LoadedModel,
    LoadOptions,
    ModelInput,
    Source,
)

KIND = "hf"

WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spm.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)

# Task heads we load with an Auto class, keyed by the suffix of the config's `architectures` entry.
# The value is (Auto class name, graph outputs, output kind).
HEAD_CLASSES = {
    "ForSequenceClassification": ("AutoModelForSequenceClassification", ["logits"], "logits"),
    "ForTokenClassification": ("AutoModelForTokenClassification", ["logits"], "logits"),
    "ForMultipleChoice": None,  # needs a 3-D input layout: refused with a message
    "ForQuestionAnswering": ("AutoModelForQuestionAnswering", ["start_logits", "end_logits"], "span"),
}
ENCODER_OUTPUTS = ["last_hidden_state"]
# ConvertSpec.task (--task) -> the head it asks for (None = the bare encoder)
TASK_HEADS = {
    "feature-extraction": None,
    "sequence-classification": "ForSequenceClassification",
    "token-classification": "ForTokenClassification",
    "question-answering": "ForQuestionAnswering",
}


class WeightsMismatchError(CheckpointError):
    """The folder's weights do not fit the model its config.json describes (missing tensors)."""


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def sniff(source: Source, options: LoadOptions) -> bool:
    """A folder with config.json and one of the weight files transformers reads."""
    folder = source.path
    return source.form == FOLDER and is_hf_folder(folder) and any((folder / f).exists() for f in WEIGHT_FILES)


def load(source: Source, shown: str, options: LoadOptions) -> LoadedModel:
    """The loader table's entry: the folder with the head --task names (auto: config.json's)."""
    return load_folder(source.path, shown, task=options.task, max_params=options.max_params)


def choose_task(config, task: str = "auto") -> tuple[tuple[str, list[str], str], str]:
    """(Auto class, outputs, output kind) and why: from --task when given, else the config's architectures."""
    if task in TASK_HEADS:
        suffix = TASK_HEADS[task]
        chosen = HEAD_CLASSES[suffix] if suffix else None  # every --task head is one the studio builds
        return (chosen or ("AutoModel", ENCODER_OUTPUTS, "hidden")), f"--task {task}"
    archs = list(getattr(config, "architectures", None) or [])
    for arch in archs:
        for suffix, head in HEAD_CLASSES.items():
            if arch.endswith(suffix):
                if head is None:
                    raise CheckpointError(
                        f"Architecture {arch} is not supported yet.",
                        hint="Supported heads: sequence classification, token "
                        "classification, question answering, or a bare encoder.",
                    )
                return head, f"config.json's architectures names {arch}"
    why = (
        f"config.json's architectures names {', '.join(archs)}, no task head"
        if archs
        else "config.json names no architectures"
    )
    return ("AutoModel", ENCODER_OUTPUTS, "hidden"), why


def task_name(auto_name: str) -> str:
    """The --task word for an Auto class name."""
    for task, suffix in TASK_HEADS.items():
        head = HEAD_CLASSES[suffix] if suffix else None
        if head and head[0] == auto_name:
            return task
    return "feature-extraction"


def _forward_params(module: torch.nn.Module) -> set[str]:
    return set(inspect.signature(module.forward).parameters)


def load_tokenizer(folder: Path):
    """The folder's tokenizer, or None when it carries no tokenizer files."""
    if not any((folder / f).exists() for f in TOKENIZER_FILES + ("tokenizer_config.json",)):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
    except Exception as e:  # a broken tokenizer is an input problem the user must see
        raise CheckpointError(f"The tokenizer files in {folder} could not be loaded: {e}") from e


def text_inputs_for(module: torch.nn.Module, config, tokenizer) -> list[ModelInput]:
    """The text tensors this model takes: ids, mask, and token_type_ids only where it is used."""
    params = _forward_params(module)
    inputs = [ModelInput(INPUT_IDS, INPUT_IDS)]
    if "attention_mask" in params:
        inputs.append(ModelInput(ATTENTION_MASK, ATTENTION_MASK))
    tok_names = getattr(tokenizer, "model_input_names", ["token_type_ids"]) if tokenizer else []
    if "token_type_ids" in params and getattr(config, "type_vocab_size", 0) > 1 and "token_type_ids" in tok_names:
        inputs.append(ModelInput(TOKEN_TYPE_IDS, TOKEN_TYPE_IDS, required=False))
    return inputs


def make_adapter(output_names: list[str]):
    """Call a transformers model with keyword tensors and return the named outputs as a tuple."""

    def adapter(module, named):
        out = module(**named, return_dict=True)
        return tuple(out[name] for name in output_names)

    return adapter


def load_folder(
    folder: Path, shown_path: str | None = None, task: str = "auto", *, max_params: int | None = None
) -> LoadedModel:
    """Load a Hugging Face model folder. Never runs remote code; weights load without pickle code.
    The parameters config.json declares are counted on the meta device first (see sources.sizing).

    task: a ConvertSpec.task head (--task); "auto" = the one config.json's architectures names."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    shown = shown_path or folder
    config = _folder_config(folder, shown)
    (auto_name, outputs, out_kind), task_why = choose_task(config, task)
    auto_cls = getattr(transformers, auto_name)
    _check_folder_size(folder, shown, auto_cls, config, max_params)
    module = _from_pretrained(folder, shown, auto_cls, auto_name, config)
    tokenizer = load_tokenizer(folder)
    return LoadedModel(
        kind="hf",
        path=shown_path or str(folder),
        module=module,
        adapter=make_adapter(outputs),
        inputs=text_inputs_for(module, config, tokenizer),
        output_names=list(outputs),
        output_kinds={o: out_kind for o in outputs},
        tokenizer=tokenizer,
        task=task_name(auto_name),
        info={
            "architecture": type(module).__name__,
            "model_type": config.model_type,
            "task_reason": task_why,
            "labels": [config.id2label[i] for i in sorted(config.id2label)]
            if out_kind == "logits"
            and getattr(config, "id2label", None)
            and auto_name.endswith("SequenceClassification")
            else None,
        },
    )


def _folder_config(folder: Path, shown: str | Path):
    """The folder's config.json as a transformers config; a folder without weight files is refused first."""
    from transformers import AutoConfig

    if not any((folder / f).exists() for f in WEIGHT_FILES):
        found = sorted(p.name for p in folder.iterdir())[:20]
        raise CheckpointError(
            f"{shown} has a config.json but no weights "
            f"(looked for {', '.join(WEIGHT_FILES)}; found: {', '.join(found) or 'nothing'})."
        )
    try:
        return AutoConfig.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
    except Exception as e:
        raise CheckpointError(f"config.json in {shown} is not a config transformers knows: {e}") from e


def _check_folder_size(folder: Path, shown: str | Path, auto_cls, config, max_params: int | None) -> None:
    """Before anything is loaded: the pickled files within the reading budget, and the parameters the config
    declares (counted on the meta device) within the bytes the folder holds and --max-params."""
    from studio.sources import budget, sizing, sniff

    for f in sorted(folder.iterdir()):  # transformers torch.loads these itself: the reading budget first
        if f.is_file() and f.suffix.lower() in (".bin", ".pt", ".pth", ".ckpt"):
            budget.check_file(f, f"{shown}: {f.name}", sniff.sniff(f).kind)
    try:
        sizing.check_declared(
            lambda: auto_cls.from_config(config, attn_implementation="eager"),
            config_name=f"config.json in {shown}",
            held_bytes=sizing.folder_weight_bytes(folder),
            held_name="the folder's weight files",
            max_params=max_params or sizing.MAX_PARAMS_DEFAULT,
            sizes=sizing.config_sizes(config),
        )
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"Cannot build a {config.model_type} model from config.json in {shown}: {e}") from e


def _from_pretrained(folder: Path, shown: str | Path, auto_cls, auto_name: str, config) -> torch.nn.Module:
    """The folder's model with its weights, on CPU in eval mode; weights that leave tensors missing are refused."""
    try:
        module, loading = auto_cls.from_pretrained(
            str(folder),
            config=config,
            trust_remote_code=False,
            local_files_only=True,
            attn_implementation="eager",
            output_loading_info=True,
        )
    except Exception as e:
        raise CheckpointError(f"Could not load the weights in {shown} as {auto_name} ({config.model_type}): {e}") from e
    missing = sorted((loading or {}).get("missing_keys") or [])
    if missing:  # transformers would initialise these at random: never export such a model
        from studio.sources.keys import KeyMatch, describe_mismatch

        unexpected = sorted((loading or {}).get("unexpected_keys") or [])
        raise WeightsMismatchError(
            describe_mismatch(KeyMatch(missing=missing, unexpected=unexpected), f"{auto_name} ({config.model_type})"),
            hint="If the weights are a state dict of your own class (backbone + head), they are read as such "
            "when named e.g. weights.pt, with --head.",
        )
    return module.to("cpu").eval()
