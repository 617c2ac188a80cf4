"""Rebuild the demo: synthetic product reviews -> a small multimodal classifier checkpoint + sample files.

    python assets/demo/make_demo.py            (CPU, deterministic, well under 2 minutes on 2 cores)

Writes into the package (studio/demo/, shipped as package data):
    demo_model.pt   onnx-studio/multimodal v1 checkpoint (text field "review"; tabular "price", "quantity";
                    labels return / keep / complaint), loadable with torch.load(..., weights_only=True)
    sample.csv      8 held-out rows: order_id, review, price, quantity, label
    sample.json     the same rows as a JSON array of records

The label is learnable from text + numbers: clear reviews name their class ("arrived damaged" ->
complaint, "does not fit" -> return, "works great" -> keep); lukewarm reviews ("it is okay I guess")
depend on the numbers: 6 or more items -> complaint, price above 80 -> return, otherwise keep.
3% of labels are flipped at random, so a perfect score is not expected.
"""

from __future__ import annotations

import csv
import json
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "studio" / "demo"  # the package's demo folder (package data)
sys.path.insert(0, str(REPO))  # run from anywhere without installing the package

from studio.models.multimodal import MultimodalConfig, build_model, save_checkpoint  # noqa: E402

SEED = 1234
LABELS = ["return", "keep", "complaint"]
N_TRAIN, N_TEST = 2000, 400
MAX_LENGTH = 48
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

PRODUCTS = [
    "headphones",
    "jacket",
    "blender",
    "desk lamp",
    "backpack",
    "running shoes",
    "kettle",
    "phone case",
    "office chair",
    "watch",
    "coffee grinder",
    "rain boots",
]
OPENERS = ["", "", "honestly,", "well,", "update:", "so", "overall"]
FILLERS = [
    "",
    "",
    "",
    "Bought it as a gift.",
    "Second order from this shop.",
    "Ordered on a Sunday.",
    "Used it for a week.",
    "My sister recommended it.",
]
CLEAR = {
    "keep": [
        "love this {p}",
        "the {p} works great",
        "exactly as described",
        "great value for the money",
        "very happy with the {p}",
        "the {p} is perfect",
        "excellent quality, would buy again",
    ],
    "return": [
        "the {p} does not fit",
        "wrong size, sending it back",
        "the {p} stopped working after two days",
        "not what I expected at all",
        "the {p} is too small",
        "colour looks nothing like the photo",
    ],
    "complaint": [
        "delivery was two weeks late",
        "the package arrived damaged",
        "customer service never replied",
        "I was charged twice",
        "items were missing from my order",
        "the courier was rude",
    ],
}
LUKEWARM = [
    "it is okay I guess",
    "average {p}, nothing special",
    "not sure about this {p}",
    "the {p} is fine",
    "mixed feelings about the {p}",
    "it does the job",
]


def make_rows(n: int, rng: random.Random, start_id: int) -> list[dict]:
    """Synthetic review rows; the label follows the rules in the module docstring."""
    rows = []
    for i in range(n):
        product = rng.choice(PRODUCTS)
        price = round(rng.uniform(5.0, 160.0), 2)
        quantity = rng.choice([1, 1, 1, 2, 2, 3, 4, 5, 6, 8, 10])
        if rng.random() < 0.6:
            label = rng.choice(LABELS)
            core = rng.choice(CLEAR[label])
        else:
            core = rng.choice(LUKEWARM)
            label = "complaint" if quantity >= 6 else ("return" if price > 80 else "keep")
        if rng.random() < 0.03:
            label = rng.choice(LABELS)
        text = " ".join(
            part for part in (rng.choice(OPENERS), core.format(p=product) + ".", rng.choice(FILLERS)) if part
        )
        rows.append(
            {
                "order_id": f"ORD-{start_id + i:06d}",
                "review": text[0].upper() + text[1:],
                "price": price,
                "quantity": quantity,
                "label": label,
            }
        )
    return rows


def make_tokenizer(corpus: list[str]):
    """A WordPiece tokenizer over a vocabulary written from the corpus, as a transformers fast tokenizer.

    Vocabulary: special tokens, every lower-cased word and punctuation mark of the corpus (sorted), then
    every single character alone and as a "##" continuation, so unseen words still tokenize.
    Written rather than trained, so that the file is identical on every run.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = {w for text in corpus for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))}
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789") | {c for w in words for c in w})
    tokens = SPECIALS + sorted(words - set(chars)) + chars + ["##" + c for c in chars]
    backend = Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    backend.normalizer, backend.pre_tokenizer = normalizer, pre_tokenizer
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_LENGTH,
        model_input_names=["input_ids", "attention_mask"],
    )


def tensors(rows: list[dict], tokenizer) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    enc = tokenizer(
        [r["review"] for r in rows], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
    )
    batch = {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "price": torch.tensor([[r["price"]] for r in rows], dtype=torch.float32),
        "quantity": torch.tensor([[float(r["quantity"])] for r in rows], dtype=torch.float32),
    }
    return batch, torch.tensor([LABELS.index(r["label"]) for r in rows])


def accuracy(model, batch, y) -> float:
    model.eval()
    with torch.no_grad():
        return (model(batch).argmax(-1) == y).float().mean().item()


def main() -> None:
    t0 = time.time()
    # One thread: a model this small is dominated by per-op overhead, so extra threads only add
    # contention, and a fixed thread count keeps the float reductions (hence the weights) reproducible.
    torch.set_num_threads(1)
    random.seed(SEED)
    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    train_rows = make_rows(N_TRAIN, rng, start_id=100000)
    test_rows = make_rows(N_TEST, rng, start_id=500000)

    tokenizer = make_tokenizer([r["review"] for r in train_rows])
    config = MultimodalConfig(
        encoder={
            "vocab_size": tokenizer.backend_tokenizer.get_vocab_size(),
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 128,
            "max_position_embeddings": 64,
            "type_vocab_size": 1,
            "pad_token_id": tokenizer.pad_token_id,
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
        },
        labels=LABELS,
        text_field="review",
        tab_fields={"price": 1, "quantity": 1},
        head_hidden=64,
        dropout=0.1,
    )
    model = build_model(config)
    x_train, y_train = tensors(train_rows, tokenizer)
    x_test, y_test = tensors(test_rows, tokenizer)
    model.fit_normalization({"price": x_train["price"], "quantity": x_train["quantity"]})

    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(SEED)
    epochs, batch_size = 6, 32
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(N_TRAIN, generator=gen).split(batch_size):
            batch = {k: v[idx] for k, v in x_train.items()}
            loss = torch.nn.functional.cross_entropy(model(batch), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()

    train_acc, test_acc = accuracy(model, x_train, y_train), accuracy(model, x_test, y_test)
    majority = max(sum(r["label"] == lab for r in test_rows) for lab in LABELS) / N_TEST
    out = save_checkpoint(model, tokenizer, HERE / "demo_model.pt")

    # sample rows: held-out, every label represented, in a fixed order
    picked: list[dict] = []
    for lab in ["return", "keep", "complaint", "return", "keep", "complaint", "keep", "return"]:
        picked.append(next(r for r in test_rows if r["label"] == lab and r not in picked))
    columns = ["order_id", "review", "price", "quantity", "label"]
    with open(HERE / "sample.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(picked)
    (HERE / "sample.json").write_text(
        json.dumps([{c: r[c] for c in columns} for r in picked], indent=2) + "\n", encoding="utf-8"
    )

    params = sum(p.numel() for p in model.parameters())
    print(
        f"demo model: {params:,} parameters, vocab {config.encoder['vocab_size']}, "
        f"{out.stat().st_size / 1e6:.2f} MB -> {out}"
    )
    print(
        f"accuracy: train {train_acc:.3f}, held-out {test_acc:.3f} "
        f"(majority class {majority:.3f}, chance {1 / len(LABELS):.3f})"
    )
    print(f"wrote sample.csv / sample.json ({len(picked)} rows) in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
