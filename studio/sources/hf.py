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
# Generators (studio.generate): the task -> (Auto class, graph outputs of the plain forward, output kind). Which
# architectures are generators is told by transformers' own mappings (`generator_task`).
TEXT_GENERATION, TEXT2TEXT_GENERATION = "text-generation", "text2text-generation"
GENERATORS = {
    TEXT_GENERATION: ("AutoModelForCausalLM", ["logits"], "logits"),
    TEXT2TEXT_GENERATION: ("AutoModelForSeq2SeqLM", ["logits"], "logits"),
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


def generator_task(config, arch: str) -> str | None:
    """text-generation for a causal LM head (`*ForCausalLM`, `*LMHeadModel` of a model type transformers maps to
    a causal LM), text2text-generation for an encoder-decoder's LM (the class transformers' seq2seq-LM mapping
    names for the model type, e.g. T5ForConditionalGeneration, MarianMTModel); None for any other class (a
    vision or multimodal *ForConditionalGeneration keeps the studio's other loaders)."""
    from transformers.models.auto import modeling_auto

    model_type = str(getattr(config, "model_type", ""))
    seq2seq = modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if getattr(config, "is_encoder_decoder", False) and (
        arch == seq2seq or (seq2seq and arch.endswith(("ForConditionalGeneration", "LMHeadModel")))
    ):
        return TEXT2TEXT_GENERATION
    if arch.endswith(("ForCausalLM", "LMHeadModel")) and model_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return TEXT_GENERATION
    return None


def choose_task(config, task: str = "auto") -> tuple[tuple[str, list[str], str], str]:
    """(Auto class, outputs, output kind) and why: from --task when given, else the config's architectures."""
    if task in GENERATORS:
        return GENERATORS[task], f"--task {task}"
    if task in TASK_HEADS:
        suffix = TASK_HEADS[task]
        chosen = HEAD_CLASSES[suffix] if suffix else None  # every --task head is one the studio builds
        return (chosen or ("AutoModel", ENCODER_OUTPUTS, "hidden")), f"--task {task}"
    archs = list(getattr(config, "architectures", None) or [])
    for arch in archs:
        generator = generator_task(config, arch)
        if generator is not None:
            return GENERATORS[generator], f"config.json's architectures names {arch}, a language-model head"
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
    for task, generator in GENERATORS.items():
        if generator[0] == auto_name:
            return task
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


def make_adapter(output_names: list[str], **fixed):
    """Call a transformers model with keyword tensors (and the `fixed` keywords, e.g. use_cache=False) and return
    the named outputs as a tuple."""

    def adapter(module, named):
        out = module(**named, **fixed, return_dict=True)
        return tuple(out[name] for name in output_names)

    return adapter


def dropped_heads(config, auto_name: str) -> tuple[str, str] | None:
    """A warning when the Auto class chosen leaves out a head the config's architecture has (e.g. --task
    feature-extraction on a GPT2LMHeadModel folder: `lm_head`), naming it, and what the file can do instead (for
    the task's reason: said for an LM head only, empty for another); None when nothing is dropped.
    The architecture is built on the meta device (no memory): its children besides the base model are heads."""
    import transformers

    archs = [a for a in getattr(config, "architectures", None) or [] if hasattr(transformers, a)]
    if not archs or auto_name != "AutoModel":
        return None  # a task head of another kind than the folder's cannot load its weights: refused at loading
    arch = archs[0]
    try:
        with torch.device("meta"):
            model = getattr(transformers, arch)(config)
    except Exception:  # a class that cannot be built from this config: nothing known to name
        return None
    base = getattr(model, getattr(model, "base_model_prefix", "") or "", None)
    heads = [n for n, child in model.named_children() if child is not base and any(True for _ in child.parameters())]
    if base is None or not heads:
        return None
    task = generator_task(config, arch)
    names = ", ".join(f"`{h}`" for h in heads)
    bare = f"the graph is the bare {type(base).__name__} (last_hidden_state)"
    if task is not None:
        return (
            f"the file gives hidden states only: {arch}'s LM head {names} is not exported, it cannot generate",
            f"{arch}'s LM head {names} is not exported: {bare}, so the file cannot generate a single token. "
            f"Leave --task auto (or give --task {task}) to export the generator with its cache.",
        )
    return "", f"{arch}'s head {names} is not exported: {bare}."


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
    task_done = task_name(auto_name)
    dropped = dropped_heads(config, auto_name)
    return LoadedModel(
        kind="hf",
        path=shown_path or str(folder),
        module=module,
        # a generator's plain forward (--no-cache): logits only, no cache built or returned
        adapter=make_adapter(outputs, use_cache=False) if task_done in GENERATORS else make_adapter(outputs),
        inputs=text_inputs_for(module, config, tokenizer),
        output_names=list(outputs),
        output_kinds={o: out_kind for o in outputs},
        tokenizer=tokenizer,
        task=task_done,
        info={
            "architecture": type(module).__name__,
            "model_type": config.model_type,
            "task_reason": task_why + (f"; {dropped[0]}" if dropped and dropped[0] else ""),
            **({"warnings": [dropped[1]]} if dropped else {}),
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
