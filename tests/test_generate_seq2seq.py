"""Encoder-decoders exported with their cache (studio.generate.seq2seq): optimum's text2text-generation-with-past
files, names and layouts, and ONNX Runtime's greedy decode through them (studio.generate.ort_seq2seq) equal to
transformers' own `generate`, one prompt at a time and batched with right padding; a decoder file with its
cross-attention cache swapped fails, naming the prompt and the step."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import tiny
import tiny_seq2seq
import torch
from transformers import GenerationConfig

from studio.generate.base import TEXT2TEXT_GENERATION, GeneratorFiles
from studio.generate.facts import GenerationRefused
from studio.generate.ort_seq2seq import OrtSeq2Seq
from studio.generate.seq2seq import export_seq2seq, read_metadata, seq2seq_facts
from studio.generate.seq2seq_check import check_seq2seq, close, encode_right

NEW = 8
ARCHS = ("t5", "bart", "marian")  # mt5 / mbart / pegasus: the matrix below, one decode each


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """torch on one thread: on the shared 2-core machine its thread pool makes a tiny generate 6x slower."""
    was = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(was)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny.bert_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = {}
    for arch in ARCHS:
        model = tiny_seq2seq.make_seq2seq(arch)
        out[arch] = (model, export_seq2seq(model, model.config, tmp_path_factory.mktemp(arch), opset=18))
    return out


def generate(model, ids, mask, eos=tiny_seq2seq.EOS, new=NEW):
    """transformers' greedy generate, plain (called here, not through the studio's reference): new ids, logits."""
    start = model.generation_config.decoder_start_token_id
    config = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=new, decoder_start_token_id=start, eos_token_id=eos,
        pad_token_id=tiny_seq2seq.PAD, output_logits=True, return_dict_in_generate=True,
    )  # fmt: skip
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), generation_config=config)
    return out.sequences[:, 1:].numpy(), [s.numpy() for s in out.logits]


def ort(files, eos=tiny_seq2seq.EOS):
    return OrtSeq2Seq(files, eos_token_id=eos, pad_token_id=tiny_seq2seq.PAD, threads=1)


@pytest.mark.parametrize("arch", ARCHS)
def test_files_names_and_layouts_are_optimums(exported, arch):
    model, files = exported[arch]
    layers, heads = 2, 2
    head_dim = 16
    assert files.task == TEXT2TEXT_GENERATION
    assert files.files == {
        "encoder": "encoder_model.onnx",
        "decoder": "decoder_model.onnx",
        "decoder_with_past": "decoder_with_past_model.onnx",
    }
    assert files.cache is not None and files.cache.cross_attention
    assert (files.cache.layers, files.cache.kv_heads, files.cache.head_dim) == (layers, heads, head_dim)
    g = ort(files)
    s = {role: sess for role, sess in g.sessions.items()}
    ins = {role: [i.name for i in sess.get_inputs()] for role, sess in s.items()}
    outs = {role: [o.name for o in sess.get_outputs()] for role, sess in s.items()}
    assert ins["encoder"] == ["input_ids", "attention_mask"] and outs["encoder"] == ["last_hidden_state"]
    assert ins["decoder"] == ["encoder_attention_mask", "input_ids", "encoder_hidden_states"]
    kv = ("key", "value")
    assert outs["decoder"] == ["logits"] + [
        f"present.{i}.{part}.{k}" for i in range(layers) for part in ("decoder", "encoder") for k in kv
    ]
    assert ins["decoder_with_past"] == ["encoder_attention_mask", "input_ids"] + [
        f"past_key_values.{i}.{part}.{k}" for i in range(layers) for part in ("decoder", "encoder") for k in kv
    ]
    assert outs["decoder_with_past"] == ["logits"] + [f"present.{i}.decoder.{k}" for i in range(layers) for k in kv]
    past = {i.name: i.shape for i in s["decoder_with_past"].get_inputs()}
    assert past["past_key_values.0.decoder.key"] == ["batch", heads, "past_decoder_sequence", head_dim]
    assert past["past_key_values.1.encoder.value"] == ["batch", heads, "encoder_sequence", head_dim]
    assert past["input_ids"] == ["batch", 1]
    present = {o.name: o.shape for o in s["decoder"].get_outputs()}
    assert present["present.0.encoder.key"] == ["batch", heads, "encoder_sequence", head_dim]
    assert files.io["decoder_with_past"] == ins["decoder_with_past"] + outs["decoder_with_past"]
    meta = read_metadata(files.folder / files.files["decoder_with_past"])
    assert meta["layers"] == layers and meta["kv_heads"] == heads and meta["head_dim"] == head_dim
    assert meta["cross_attention"] is True and meta["layout"].startswith("batch, kv_heads, past_sequence")
    assert meta["decoder_start_token_id"] == model.generation_config.decoder_start_token_id
    assert meta["eos_token_id"] == [tiny_seq2seq.EOS]
    # the cached step projects nothing from the encoder: its file holds fewer weights than the first step's
    weights = {
        r: sum(t.ByteSize() for t in onnx.load(str(files.folder / f)).graph.initializer) for r, f in files.files.items()
    }
    assert weights["decoder_with_past"] < weights["decoder"]
    assert g.providers() == ["CPUExecutionProvider"]


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_tokens_equal_generate_one_by_one_and_batched(exported, tokenizer, arch):
    model, files = exported[arch]
    g = ort(files)
    ids, mask = encode_right(tokenizer, tiny_seq2seq.PROMPTS, tiny_seq2seq.PAD)
    assert (mask[:, -1] == 0).any() and (mask[:, 0] == 1).all()  # right-padded: the batch really pads
    want, want_logits = generate(model, ids, mask)
    got = g.greedy(ids, mask, NEW)
    np.testing.assert_array_equal(got.ids, want)
    assert len(got.logits) == len(want_logits) == NEW
    assert all(close(a, b, 1e-4, 1e-4) for a, b in zip(got.logits, want_logits))  # 1e-4 + 1e-4 * the step's max
    assert len({tuple(r) for r in want.tolist()}) > 1  # the prompts continue differently: the encoder matters
    for b in range(len(tiny_seq2seq.PROMPTS)):
        n = int(mask[b].sum())
        one, _ = generate(model, ids[b : b + 1, :n], mask[b : b + 1, :n])
        np.testing.assert_array_equal(g.greedy(ids[b : b + 1, :n], mask[b : b + 1, :n], NEW).ids, one)
        np.testing.assert_array_equal(one[0], want[b])  # padding changes nothing in transformers either


def test_eos_ends_a_sequence_as_generate_does(exported, tokenizer):
    """EOS taken from a continuation: that row stops there, the later tokens are pad, the others go on."""
    model, files = exported["t5"]
    ids, mask = encode_right(tokenizer, tiny_seq2seq.PROMPTS, tiny_seq2seq.PAD)
    plain, _ = generate(model, ids, mask, eos=None)
    row = next(r for r in range(len(plain)) if len(set(plain[r, :4].tolist())) > 1)
    eos = int(plain[row, 2]) if plain[row, 2] != plain[row, 0] else int(plain[row, 1])
    want, _ = generate(model, ids, mask, eos=eos)
    got = ort(files, eos=eos).greedy(ids, mask, NEW)
    np.testing.assert_array_equal(got.ids, want)
    stop = got.lengths[row]
    assert stop < NEW and got.ids[row, stop - 1] == eos
    assert (got.ids[row, stop:] == tiny_seq2seq.PAD).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_check_passes_with_probes(exported, tokenizer, arch):
    model, files = exported[arch]
    runs, probes = check_seq2seq(model, tokenizer, files, tiny_seq2seq.PROMPTS, NEW, ort_generator=ort(files))
    assert [r.mode for r in runs] == ["one by one", "batched"] and runs[1].padding_side == "right"
    assert all(r.ok and r.identical_share == 1.0 for r in runs), [r.error for r in runs]
    for r in runs:
        assert all(p.same and p.divergence is None and p.max_logits_diff < 1e-4 for p in r.prompts)
    assert {p["past"] for p in probes} >= {0, 3, NEW + 8} and max(p["sequence"] for p in probes) > 10
    assert all(p["ok"] and p["max_abs_diff"] < 1e-4 for p in probes), probes


def _swap_inputs(path, a, b):
    """Rewire the graph so the tensor fed as `a` is read where `b` was and the other way round."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        node.input[:] = [b if x == a else a if x == b else x for x in node.input]
    onnx.save(model, str(path))


def test_swapped_cross_attention_cache_fails_naming_prompt_and_step(exported, tokenizer, tmp_path):
    model, files = exported["bart"]
    broken = tmp_path / "broken"
    shutil.copytree(files.folder, broken)
    _swap_inputs(
        broken / files.files["decoder_with_past"], "past_key_values.0.encoder.key", "past_key_values.0.encoder.value"
    )
    bad = GeneratorFiles(files.task, broken, dict(files.files), dict(files.io), files.cache, files.external_data)
    runs, probes = check_seq2seq(model, tokenizer, bad, tiny_seq2seq.PROMPTS, NEW, ort_generator=ort(bad))
    assert runs and not any(r.ok for r in runs)
    wrong = [p for p in runs[0].prompts if not p.same]
    assert wrong
    d = wrong[0].divergence
    assert d is not None and not d.near_tie and d.prompt == wrong[0].prompt
    assert d.step >= 1  # step 0 comes from decoder_model.onnx, which is intact
    assert d.expected == wrong[0].reference_ids[d.step] and d.got == wrong[0].onnx_ids[d.step] and d.margin > 0
    assert [p["ok"] for p in probes if p["past"] > 0] and not any(p["ok"] for p in probes if p["past"] > 0)
    assert all(p["ok"] for p in probes if p["past"] == 0)


def test_no_cache_exports_two_files_that_decode_the_same(tokenizer, tmp_path):
    model = tiny_seq2seq.make_seq2seq("t5")
    files = export_seq2seq(model, model.config, tmp_path, with_past=False)
    assert set(files.files) == {"encoder", "decoder"} and files.cache is None
    g = ort(files)
    assert [o.name for o in g.sessions["decoder"].get_outputs()] == ["logits"] and not g.with_past
    ids, mask = encode_right(tokenizer, tiny_seq2seq.PROMPTS, tiny_seq2seq.PAD)
    np.testing.assert_array_equal(g.greedy(ids, mask, NEW).ids, generate(model, ids, mask)[0])


@pytest.mark.parametrize("arch", ["mt5", "mbart", "pegasus", "m2m_100", "umt5"])
def test_matrix_opset17_external_data(tokenizer, tmp_path, arch):
    """The other families, at opset 17, weights in .data files: the batched decode equals generate."""
    model = tiny_seq2seq.make_seq2seq(arch)
    files = export_seq2seq(model, model.config, tmp_path, opset=17, external_data=True)
    assert files.external_data
    for f in files.files.values():
        assert (tmp_path / (f + ".data")).is_file()
        assert onnx.load(str(tmp_path / f), load_external_data=False).opset_import[0].version == 17
    ids, mask = encode_right(tokenizer, tiny_seq2seq.PROMPTS, tiny_seq2seq.PAD)
    want, want_logits = generate(model, ids, mask)
    got = ort(files).greedy(ids, mask, NEW)
    np.testing.assert_array_equal(got.ids, want)
    assert all(close(a, b, 1e-4, 1e-4) for a, b in zip(got.logits, want_logits))


def test_export_leaves_the_model_in_eval_mode_and_refuses_a_decoder(tmp_path):
    model = tiny_seq2seq.make_seq2seq("bart")
    export_seq2seq(model, model.config, tmp_path / "bart")
    assert not any(m.training for m in model.modules())  # no dropout switched on by the export
    import transformers as tf

    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(GenerationRefused, match="not an encoder-decoder"):
        export_seq2seq(gpt2, gpt2.config, tmp_path / "gpt2")
    assert not (tmp_path / "gpt2").exists()


@pytest.mark.parametrize(
    "config,why",
    [
        ("SwitchTransformersConfig", "expert"),
        ("LEDConfig", "attention_window"),
        ("BigBirdPegasusConfig", "block-sparse"),
        ("ProphetNetConfig", "n-gram"),
    ],
)
def test_architectures_a_trace_cannot_follow_are_refused_with_the_reason(config, why):
    """Measured: these decode other tokens (or none) through a traced graph; they are refused, never written."""
    import transformers as tf

    with pytest.raises(GenerationRefused, match=why):
        seq2seq_facts(getattr(tf, config)())


def test_decoder_files_in_float16_take_the_fp32_encoder_states(exported, tokenizer, tmp_path):
    """Decoder files converted to float16 inputs and outputs (no keep_io_types) beside the fp32 encoder: the loop
    casts the encoder's states and feeds the float16 cache back as it came; the tokens stay transformers'."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model, files = exported["t5"]
    half = tmp_path / "half"
    shutil.copytree(files.folder, half)
    for role in ("decoder", "decoder_with_past"):
        path = half / files.files[role]
        onnx.save(convert_float_to_float16(onnx.load(str(path)), keep_io_types=False), str(path))
    bad = GeneratorFiles(files.task, half, dict(files.files), dict(files.io), files.cache, files.external_data)
    g = ort(bad)
    assert {i.type for i in g.sessions["decoder"].get_inputs() if i.name == "encoder_hidden_states"} == {
        "tensor(float16)"
    }
    ids, mask = encode_right(tokenizer, tiny_seq2seq.PROMPTS, tiny_seq2seq.PAD)
    got = g.greedy(ids, mask, NEW)
    want, _ = generate(model, ids, mask)
    assert got.logits[0].dtype == np.float32 and got.ids.shape == want.shape
    assert float((got.ids == want).mean()) >= 0.9
