"""Tiny real architectures for tests: transformers configs (random weights, real model code) and
tokenizers built from a written vocabulary. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "the a an is was it this that product great terrible broken arrived late fast love hate "
    "return refund keep works fine bad good quality price cheap expensive box damaged again "
    "never always would buy recommend not very and or but to of for with my i you"
).split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

SAMPLE_CSV = """order_id,review,price,quantity,label
A-001,the product arrived late and the box was damaged,19.99,1,return
A-002,great quality and fast i would buy again,5.50,3,keep
A-003,it never works and i want a refund,42.00,1,complaint
A-004,good price for the quality,12.25,2,keep
A-005,terrible product it arrived broken,7.75,4,return
"""


def write_vocab(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text(
        "\n".join(
            SPECIALS
            + WORDS
            + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
            + list("abcdefghijklmnopqrstuvwxyz0123456789.,!?-")
        )
        + "\n"
    )
    return vocab


def bert_tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab=str(write_vocab(folder)), do_lower_case=True)


def vocab_size() -> int:
    return len(SPECIALS) + len(WORDS) + 26 + 41


COMMON = dict(hidden_size=32, num_attention_heads=2, intermediate_size=37, max_position_embeddings=64, pad_token_id=0)


def make_config(arch: str, num_labels: int = 3):
    import transformers as tf

    v = vocab_size()
    if arch == "bert":
        return tf.BertConfig(vocab_size=v, num_hidden_layers=2, num_labels=num_labels, **COMMON)
    if arch == "roberta":
        return tf.RobertaConfig(
            vocab_size=v,
            num_hidden_layers=2,
            num_labels=num_labels,
            type_vocab_size=1,
            bos_token_id=2,
            eos_token_id=3,
            **COMMON,
        )
    if arch == "distilbert":
        return tf.DistilBertConfig(
            vocab_size=v,
            n_layers=2,
            n_heads=2,
            dim=32,
            hidden_dim=37,
            max_position_embeddings=64,
            pad_token_id=0,
            num_labels=num_labels,
        )
    if arch == "deberta-v2":
        return tf.DebertaV2Config(
            vocab_size=v,
            num_hidden_layers=2,
            num_labels=num_labels,
            type_vocab_size=0,
            relative_attention=True,
            position_buckets=16,
            max_relative_positions=32,
            pos_att_type=["p2c", "c2p"],
            **COMMON,
        )
    raise ValueError(arch)


def make_hf_folder(
    folder: Path, arch: str = "bert", task: str = "sequence", seed: int = 0, safetensors: bool = True
) -> Path:
    """Save a tiny randomly initialised model + tokenizer as a Hugging Face folder."""
    import transformers as tf

    torch.manual_seed(seed)
    config = make_config(arch)
    cls = tf.AutoModelForSequenceClassification if task == "sequence" else tf.AutoModel
    model = cls.from_config(config).eval()
    model.save_pretrained(str(folder), safe_serialization=safetensors)
    bert_tokenizer(folder / "_vocab").save_pretrained(str(folder))
    return folder


def write_sample(path: Path, text: str = SAMPLE_CSV) -> Path:
    path.write_text(text)
    return path
