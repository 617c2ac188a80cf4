"""Tiny random models of any architecture transformers builds for sequence classification, from its own
config class with small sizes (real model code, random weights), saved as Hugging Face folders with the
written vocabulary of tiny.py. Nothing is downloaded. Used by tests/test_architectures.py and
benchmarks/architectures.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import tiny
import torch

# Canonical size names -> small values; each goes to the config field of that name, or the field its
# attribute_map points to (GPT-2's n_embd for hidden_size, ...), when the config class has one.
SMALL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=64,
    max_position_embeddings=64,
    embedding_size=32,
    # encoder-decoders (BART / mBART / T5 families)
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    num_layers=2,
    num_decoder_layers=2,
    d_ff=64,
    d_kv=16,
    # MoE: few, small experts
    num_experts=2,
    num_local_experts=2,
    n_routed_experts=2,
    num_experts_per_tok=1,
    moe_intermediate_size=16,
    shared_expert_intermediate_size=16,
    n_shared_experts=1,
    # rotary / partial rotary sizes tied to the head size
    rotary_dim=8,
    rotary_emb_base=10000,
    # token ids inside the written vocabulary ([PAD]=0, [CLS]=2, [SEP]=3: the tokenizer's)
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=3,
    sep_token_id=3,
    cls_token_id=2,
    decoder_start_token_id=0,
)
MAX_PARAMS = 5_000_000
# Per architecture, where the generic sizes do not fit its code (kept short, each with its reason).
OVERRIDES: dict[str, dict] = {
    "modernbert": dict(global_attn_every_n_layers=2, local_attention=16),  # window must fit the sequence
    "albert": dict(embedding_size=16),  # ALBERT factorises embeddings below the hidden size
}


# Attributes a model's code reads that its config class does not declare as a field.
EXTRA: dict[str, dict] = {t: {"decoder_start_token_id": 0} for t in ("t5", "mt5", "umt5")}


def config_class(model_type: str):
    from transformers import CONFIG_MAPPING

    return CONFIG_MAPPING[model_type]


def tiny_config(model_type: str, num_labels: int = 3):
    cls = config_class(model_type)
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    amap = getattr(cls, "attribute_map", {}) or {}
    kw = {}
    for key, value in {**SMALL, "vocab_size": tiny.vocab_size(), **OVERRIDES.get(model_type, {})}.items():
        real = amap.get(key, key)
        if real in fields:
            kw[real] = value
    config = cls(**kw, num_labels=num_labels)
    for key, value in EXTRA.get(model_type, {}).items():
        setattr(config, key, value)
    return config


def make_folder(folder: Path, model_type: str, seed: int = 0) -> Path:
    """A tiny <Arch>ForSequenceClassification saved with the written vocabulary's tokenizer."""
    import transformers as tf

    torch.manual_seed(seed)
    config = tiny_config(model_type)
    with torch.device("meta"):  # count first: a size the small values missed could take gigabytes
        params = sum(p.numel() for p in tf.AutoModelForSequenceClassification.from_config(config).parameters())
    if params > MAX_PARAMS:
        raise ValueError(f"{model_type}: the tiny config still declares {params:,} parameters")
    model = tf.AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(str(folder))
    tiny.bert_tokenizer(folder / "_vocab").save_pretrained(str(folder))
    return folder


def sequence_classification_types() -> list[str]:
    """Every model type transformers maps to a sequence-classification class, in its order."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    return list(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)
