"""The studio's multimodal classifier, its checkpoint format and its loader."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from studio.errors import CheckpointError
from studio.models.multimodal import (
    FORMAT,
    MultimodalConfig,
    build_model,
    checkpoint_dict,
    save_checkpoint,
    tokenizer_from_dict,
    tokenizer_to_dict,
)
from studio.sources import multimodal as source
from studio.sources.base import ATTENTION_MASK, INPUT_IDS, TABULAR

DEMO = Path(__file__).resolve().parents[1] / "studio" / "demo"
WORDS = ["good", "bad", "great", "late", "broken", "fits", "price", "the", "is", "was", "item", "."]


def tiny_tokenizer(max_length: int = 32):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + ["##s", "##ly"]
    backend = Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
        model_input_names=["input_ids", "attention_mask"],
    )


def tiny_config(**overrides) -> MultimodalConfig:
    kwargs = dict(
        encoder={
            "vocab_size": 24,
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "max_position_embeddings": 32,
            "type_vocab_size": 1,
        },
        labels=["return", "keep", "complaint"],
        text_field="review",
        tab_fields={"unit price": 1, "dims": 3},
        head_hidden=8,
        dropout=0.1,
    )
    kwargs.update(overrides)
    return MultimodalConfig(**kwargs)


def tiny_model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = build_model(tiny_config(**overrides))
    model.fit_normalization({"unit price": torch.rand(20, 1) * 100, "dims": torch.randn(20, 3) * 5 + 2})
    return model


def make_batch(batch: int = 2, seq: int = 7, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 24, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, seq - 2 :] = 0
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "unit price": torch.rand(batch, 1, generator=g) * 100,
        "dims": torch.randn(batch, 3, generator=g),
    }


def run(module, batch):
    with torch.no_grad():
        return module(batch)


def named_from(batch, loaded):
    """Model batch (keys = field names) -> named graph tensors (keys = ModelInput names)."""
    named = {INPUT_IDS: batch["input_ids"], ATTENTION_MASK: batch["attention_mask"]}
    for inp in loaded.tabular_inputs:
        named[inp.name] = batch[inp.column]
    return named


# -- model ---------------------------------------------------------------------------------------
def test_forward_shapes_and_scalar_fields():
    model = tiny_model()
    batch = make_batch(batch=3, seq=5)
    logits = run(model, batch)
    assert logits.shape == (3, 3) and logits.dtype == torch.float32
    flat = dict(batch, **{"unit price": batch["unit price"][:, 0]})  # [B] is read as width 1
    assert torch.allclose(run(model, flat), logits)
    assert run(model, make_batch(batch=1, seq=11)).shape == (1, 3)


def test_model_without_tabular_fields():
    model = build_model(tiny_config(tab_fields={}))
    out = run(model, {"input_ids": torch.randint(5, 24, (2, 4)), "attention_mask": torch.ones(2, 4, dtype=torch.long)})
    assert out.shape == (2, 3)


def test_missing_batch_key_is_named():
    model = tiny_model()
    batch = make_batch()
    del batch["dims"]
    with pytest.raises(KeyError, match="dims"):
        run(model, batch)


def test_normalisation_buffers_follow_raw_values():
    model = tiny_model()
    mean, std = model.normalization()
    assert set(mean) == {"unit price", "dims"} and len(mean["dims"]) == 3
    assert all(s > 0 for s in std["dims"])
    # shifting a raw value by one std moves the normalised feature by exactly 1: same as editing the buffer
    batch = make_batch()
    shifted = dict(batch, dims=batch["dims"] + torch.tensor(std["dims"]))
    with torch.no_grad():
        model.tab_mean[1:] += torch.tensor(std["dims"])
    assert torch.allclose(run(model, shifted), run(tiny_model(), batch), atol=1e-5)


def test_config_round_trip_and_validation():
    cfg = tiny_config(tab_mean={"unit price": [3.0], "dims": [0.0, 1.0, 2.0]})
    assert MultimodalConfig.from_dict(cfg.to_dict()) == cfg
    assert MultimodalConfig.from_dict({**cfg.to_dict(), "learning_rate": 1e-3}) == cfg  # extras ignored
    with pytest.raises(CheckpointError, match="'labels'"):
        MultimodalConfig.from_dict({"encoder": {}})
    with pytest.raises(CheckpointError, match="width 0"):
        MultimodalConfig.from_dict({**cfg.to_dict(), "tab_fields": {"price": 0}})
    with pytest.raises(CheckpointError, match="width is 3"):
        MultimodalConfig.from_dict({**cfg.to_dict(), "tab_mean": {"dims": [1.0]}})
    with pytest.raises(ValueError, match="distinct"):
        tiny_config(labels=["a", "a"])


# -- tokenizer and checkpoint --------------------------------------------------------------------
def test_tokenizer_round_trip():
    tok = tiny_tokenizer()
    entry = tokenizer_to_dict(tok)
    assert isinstance(entry["tokenizer.json"], str) and entry["config"]["pad_token"] == "[PAD]"
    again = tokenizer_from_dict(entry)
    texts = ["The item was great.", "Bad price, broken fits!"]
    assert again(texts, padding=True)["input_ids"] == tok(texts, padding=True)["input_ids"]
    assert again.model_max_length == 32 and again.pad_token_id == 0
    assert list(again(texts[0]).keys()) == ["input_ids", "attention_mask"]
    with pytest.raises(CheckpointError, match="cannot be read"):
        tokenizer_from_dict({"tokenizer.json": "{not json", "config": {}})
    with pytest.raises(CheckpointError, match="not in its vocabulary"):
        tokenizer_from_dict({**entry, "config": {"pad_token": "<pad>"}})
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        tokenizer_from_dict({"vocab": {}})


def test_save_load_round_trip_weights_only(tmp_path):
    model = tiny_model()
    path = save_checkpoint(model, tiny_tokenizer(), tmp_path / "mm.pt")
    obj = torch.load(path, weights_only=True)
    assert obj["format"] == FORMAT and obj["version"] == 1
    assert obj["config"]["tab_mean"]["dims"] == model.normalization()[0]["dims"]
    assert source.looks_like(obj)

    loaded = source.build(obj, str(path))
    assert loaded.kind == "multimodal" and not loaded.module.training
    assert [(i.name, i.kind, i.column, i.width) for i in loaded.inputs] == [
        ("input_ids", INPUT_IDS, None, None),
        ("attention_mask", ATTENTION_MASK, None, None),
        ("unit_price", TABULAR, "unit price", 1),
        ("dims", TABULAR, "dims", 3),
    ]
    assert loaded.output_names == ["probs"] and loaded.output_kinds == {"probs": "probs"}
    assert loaded.info["architecture"] == "MultimodalClassifier"
    assert loaded.info["labels"] == ["return", "keep", "complaint"]
    assert loaded.info["text_field"] == "review" and loaded.info["tabular_fields"] == {"unit price": 1, "dims": 3}

    batch = make_batch(batch=4, seq=6)
    assert torch.equal(run(loaded.module, batch), run(model, batch))
    with torch.no_grad():
        (probs,) = loaded.adapter(loaded.module, named_from(batch, loaded))
    assert torch.allclose(probs, torch.softmax(run(model, batch), -1))
    assert torch.allclose(probs.sum(-1), torch.ones(4))
    assert loaded.tokenizer("The item.")["input_ids"] == tiny_tokenizer()("The item.")["input_ids"]


def test_python_names_for_columns():
    taken = {"input_ids", "attention_mask"}
    names = [source.python_name(c, taken) for c in ["unit price", "class", "2x", "input_ids", "unit-price", "é"]]
    assert names == ["unit_price", "class_", "f_2x", "input_ids_2", "unit_price_2", "field"]
    assert all(n.isidentifier() for n in names)


# -- other layouts -------------------------------------------------------------------------------
def test_lightning_style_dict_loads_and_reports_ignored_keys():
    model = tiny_model()
    obj = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {**{"model." + k: v for k, v in model.state_dict().items()}, "loss_fn.weight": torch.ones(3)},
        "hyper_parameters": {
            "config": model.config.to_dict(),
            "lr": 1e-3,
            "tokenizer": tokenizer_to_dict(tiny_tokenizer()),
        },
    }
    assert source.looks_like(obj)
    loaded = source.build(obj, "lightning.ckpt")
    batch = make_batch()
    assert torch.equal(run(loaded.module, batch), run(model, batch))
    assert loaded.info["layout"] == "lightning" and loaded.info["ignored_keys"] == ["loss_fn.weight"]
    assert loaded.tokenizer is not None


def test_lightning_hyper_parameters_as_the_config_itself_without_tokenizer():
    model = tiny_model()
    obj = {
        "state_dict": {"model._orig_mod." + k: v for k, v in model.state_dict().items()},
        "hyper_parameters": {**model.config.to_dict(), "lr": 1e-3},
    }
    loaded = source.build(obj, "x.ckpt")
    assert torch.equal(run(loaded.module, make_batch()), run(model, make_batch()))
    assert loaded.tokenizer is None and "tokenizer_note" in loaded.info


@pytest.mark.parametrize(
    "prefix",
    [
        "_fsdp_wrapped_module.",
        "module.",
        "model.",
        "_orig_mod.",
        "module._orig_mod.",
        "model.module.",
        "_fsdp_wrapped_module.module.",
    ],
)
def test_prefixed_state_dict_keys_load(prefix):
    model = tiny_model()
    obj = checkpoint_dict(model, tiny_tokenizer())
    obj["state_dict"] = {prefix + k: v for k, v in obj["state_dict"].items()}
    loaded = source.build(obj, "p.pt")
    assert torch.equal(run(loaded.module, make_batch()), run(model, make_batch()))


def test_nested_fsdp_keys_load():
    model = tiny_model()
    obj = checkpoint_dict(model, tiny_tokenizer())
    obj["state_dict"] = {
        "_fsdp_wrapped_module." + k.replace("layer.0.", "layer.0._fsdp_wrapped_module."): v
        for k, v in obj["state_dict"].items()
    }
    assert any("layer.0._fsdp_wrapped_module." in k for k in obj["state_dict"])
    loaded = source.build(obj, "fsdp.pt")
    assert torch.equal(run(loaded.module, make_batch()), run(model, make_batch()))


# -- malformed checkpoints -----------------------------------------------------------------------
def test_wrong_shapes_name_the_keys():
    obj = checkpoint_dict(tiny_model(), tiny_tokenizer())
    obj["config"]["encoder"]["vocab_size"] = 30  # weights were trained with 24
    with pytest.raises(CheckpointError) as e:
        source.build(obj, "bad.pt")
    assert "embeddings.word_embeddings.weight" in str(e.value) and "[24, 16]" in str(e.value)
    assert "vocab_size=30" in str(e.value)


def test_wrong_tabular_width_names_the_head():
    obj = checkpoint_dict(tiny_model(), tiny_tokenizer())
    obj["config"]["tab_fields"]["dims"] = 2
    obj["config"]["tab_mean"] = obj["config"]["tab_std"] = None
    with pytest.raises(CheckpointError) as e:
        source.build(obj, "bad.pt")
    assert "head.0.weight" in str(e.value) and "tab_mean" in str(e.value)


def test_missing_and_unexpected_keys_are_named():
    obj = checkpoint_dict(tiny_model(), tiny_tokenizer())
    del obj["state_dict"]["head.3.bias"]
    obj["state_dict"]["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as e:
        source.build(obj, "bad.pt")
    assert "'head.3.bias'" in str(e.value) and "'extra.weight'" in str(e.value)


def test_non_tensor_entries_are_named():
    obj = checkpoint_dict(tiny_model(), tiny_tokenizer())
    obj["state_dict"]["head.3.bias"] = [0.0, 0.0, 0.0]
    with pytest.raises(CheckpointError, match="not tensors: 'head.3.bias'"):
        source.build(obj, "bad.pt")


def test_missing_config_state_dict_or_newer_version():
    obj = checkpoint_dict(tiny_model(), tiny_tokenizer())
    no_config = {k: v for k, v in obj.items() if k != "config"}
    assert source.looks_like(no_config)  # claimed by its format marker, so the error can be specific
    with pytest.raises(CheckpointError, match="No multimodal config") as e:
        source.build(no_config, "a.pt")
    assert "'state_dict'" in str(e.value)
    with pytest.raises(CheckpointError, match="lacks 'labels'"):
        source.build({**obj, "config": {k: v for k, v in obj["config"].items() if k != "labels"}}, "a.pt")
    with pytest.raises(CheckpointError, match="No 'state_dict'"):
        source.build({k: v for k, v in obj.items() if k != "state_dict"}, "a.pt")
    with pytest.raises(CheckpointError, match="version 2"):
        source.build({**obj, "version": 2}, "a.pt")
    with pytest.raises(CheckpointError, match="invalid"):
        source.build(
            {**obj, "config": {**obj["config"], "encoder": {**obj["config"]["encoder"], "num_attention_heads": 3}}},
            "a.pt",
        )


def test_looks_like_rejects_other_checkpoints():
    model = tiny_model()
    assert not source.looks_like(model.state_dict())  # a bare state dict
    assert not source.looks_like({"state_dict": model.state_dict(), "hyper_parameters": {"lr": 1e-3}})
    assert not source.looks_like([1, 2, 3])
    with pytest.raises(CheckpointError, match="is a dict"):
        source.build([1, 2, 3], "x.pt")


# -- the demo ------------------------------------------------------------------------------------
def test_demo_checkpoint_loads_and_predicts_the_sample():
    path = DEMO / "demo_model.pt"
    assert path.stat().st_size < 5_000_000
    loaded = source.build(torch.load(path, weights_only=True), str(path))
    assert [i.name for i in loaded.tabular_inputs] == ["price", "quantity"]
    with open(DEMO / "sample.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and set(rows[0]) == {"order_id", "review", "price", "quantity", "label"}
    enc = loaded.tokenizer([r["review"] for r in rows], padding=True, truncation=True, return_tensors="pt")
    named = {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "price": torch.tensor([[float(r["price"])] for r in rows]),
        "quantity": torch.tensor([[float(r["quantity"])] for r in rows]),
    }
    with torch.no_grad():
        (probs,) = loaded.adapter(loaded.module, named)
    assert probs.shape == (8, 3)
    assert torch.allclose(probs.sum(-1), torch.ones(8), atol=1e-6)
    predicted = [loaded.info["labels"][i] for i in probs.argmax(-1).tolist()]
    assert sum(p == r["label"] for p, r in zip(predicted, rows)) >= 6  # chance would be ~3 of 8


# -- exportability -------------------------------------------------------------------------------
def test_dynamo_onnx_export_with_dynamic_batch_and_sequence(tmp_path):
    import onnxruntime as ort

    model = tiny_model()
    loaded = source.build(checkpoint_dict(model, tiny_tokenizer()), "tiny.pt")

    class Wrapper(torch.nn.Module):  # one named parameter per graph input, as the engine builds it
        def __init__(self, module, adapter):
            super().__init__()
            self.module, self.adapter = module, adapter

        def forward(self, input_ids, attention_mask, unit_price, dims):
            return self.adapter(
                self.module,
                {"input_ids": input_ids, "attention_mask": attention_mask, "unit_price": unit_price, "dims": dims},
            )[0]

    wrapper = Wrapper(loaded.module, loaded.adapter).eval()
    names = [i.name for i in loaded.inputs]
    assert names == ["input_ids", "attention_mask", "unit_price", "dims"]
    example = named_from(make_batch(batch=2, seq=7), loaded)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    out = tmp_path / "mm.onnx"
    torch.onnx.export(
        wrapper,
        tuple(example[n] for n in names),
        str(out),
        dynamo=True,
        input_names=names,
        output_names=["probs"],
        dynamic_shapes={
            "input_ids": {0: batch, 1: seq},
            "attention_mask": {0: batch, 1: seq},
            "unit_price": {0: batch},
            "dims": {0: batch},
        },
    )
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    other = named_from(make_batch(batch=5, seq=11, seed=7), loaded)  # another batch and sequence size
    (got,) = session.run(["probs"], {n: t.numpy() for n, t in other.items()})
    with torch.no_grad():
        want = wrapper(*(other[n] for n in names)).numpy()
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_categorical_vocabulary_is_validated_and_loaded(tmp_path):
    with pytest.raises(ValueError, match="has 2 categories; the field's width is 3"):
        tiny_config(tab_fields={"channel": 3}, tab_vocab={"channel": ["phone", "chat"]})
    with pytest.raises(ValueError, match="not a tabular field"):
        tiny_config(tab_fields={"channel": 2}, tab_vocab={"kind": ["a", "b"]})
    with pytest.raises(ValueError, match="distinct strings"):
        tiny_config(tab_fields={"channel": 2}, tab_vocab={"channel": ["a", "a"]})
    model = build_model(
        tiny_config(tab_fields={"unit price": 1, "channel": 3}, tab_vocab={"channel": ["phone", "chat", "email"]})
    )
    path = save_checkpoint(model, tiny_tokenizer(), tmp_path / "mm.pt")
    loaded = source.build(torch.load(path, weights_only=True), str(path))
    by_name = {i.name: i for i in loaded.inputs}
    assert by_name["channel"].vocab == ["phone", "chat", "email"] and by_name["channel"].width == 3
    assert by_name["unit_price"].vocab is None
    assert loaded.describe()["categorical_fields"] == {"channel": ["phone", "chat", "email"]}
