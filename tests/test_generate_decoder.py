"""Decoders exported with their cache (studio.generate.decoder): optimum's text-generation-with-past names and
layouts, and ONNX Runtime's greedy decode through the file equal to transformers' own `generate` (the reference),
one prompt at a time and batched with left padding; shape probes at past 0, short and longer than the sample."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tiny_lm

from studio.generate.decoder import export_decoder, read_layout
from studio.generate.facts import GenerationRefused, decoder_facts
from studio.generate.ort_decoder import OrtDecoder, position_ids
from studio.generate.reference import encode, reference_steps
from studio.generate.verify import check_generation

NEW = 8


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """gpt2 (MHA), llama (GQA: 4 heads, 2 kv heads), bloom (ALiBi: no position_ids): model and its files."""
    out = {}
    for arch in ("gpt2", "llama", "bloom"):
        model = tiny_lm.model(arch)
        out[arch] = (model, export_decoder(model, model.config, tmp_path_factory.mktemp(arch), opset=18))
    return out


@pytest.mark.parametrize("arch,kv_heads,positions", [("gpt2", 4, True), ("llama", 2, True), ("bloom", 4, False)])
def test_names_and_layouts_are_optimums(exported, arch, kv_heads, positions):
    model, files = exported[arch]
    path = files.folder / files.files["model"]
    sess = OrtDecoder(files).session
    ins = {i.name: i.shape for i in sess.get_inputs()}
    outs = {o.name: o.shape for o in sess.get_outputs()}
    layers = model.config.num_hidden_layers
    want_in = ["input_ids", "attention_mask"] + (["position_ids"] if positions else [])
    want_in += [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    assert list(ins) == want_in
    assert list(outs) == ["logits"] + [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    assert ins["input_ids"] == ["batch", "sequence"]
    assert ins["attention_mask"] == ["batch", "past_sequence + sequence"]
    assert ins["past_key_values.0.key"] == ["batch", kv_heads, "past_sequence", 8]
    assert outs["present.1.value"] == ["batch", kv_heads, "past_sequence + sequence", 8]
    assert outs["logits"] == ["batch", "sequence", model.config.vocab_size]
    assert files.cache is not None and files.cache.kv_heads == kv_heads and files.cache.layers == layers
    assert files.io["model"] == want_in + list(outs)
    layout = read_layout(path)
    assert layout["kv_heads"] == kv_heads and layout["head_dim"] == 8 and layout["layers"] == layers
    assert layout["position_ids"] is positions and layout["task"] == "text-generation"
    assert not files.external_data and [p.name for p in files.folder.iterdir()] == ["model.onnx"]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bloom"])
def test_ort_greedy_is_transformers_generate(exported, arch):
    model, files = exported[arch]
    runs, probes = check_generation(model, tiny_lm.tokenizer(), files, tiny_lm.PROMPTS, max_new_tokens=NEW)
    assert [r.mode for r in runs] == ["one by one", "batched"]
    assert runs[1].padding_side == "left"
    for run in runs:
        assert run.ok and run.error is None and run.identical_share == 1.0
        assert len(run.prompts) == len(tiny_lm.PROMPTS)
        for p in run.prompts:
            assert p.same and p.divergence is None
            assert p.reference_ids == p.onnx_ids and 0 < len(p.onnx_ids) <= NEW
            assert p.max_logits_diff is not None and p.max_logits_diff < 1e-3  # logits ~ +-30 (sharpened)
            assert p.onnx_text == p.reference_text
    # the batched continuations are the one-by-one ones (left padding and positions from the mask are right)
    assert [p.onnx_ids for p in runs[0].prompts] == [p.onnx_ids for p in runs[1].prompts]
    pasts = {p["past"] for p in probes}
    longest = max(encode(tiny_lm.tokenizer(), [t], 1)[0].shape[1] for t in tiny_lm.PROMPTS)
    assert 0 in pasts and any(0 < p < longest for p in pasts) and max(pasts) > longest + NEW
    assert {p["batch"] for p in probes} >= {1, 2, 3} and {p["sequence"] for p in probes} >= {1, 2, 4}
    assert all(p["ok"] and p["max_abs_diff"] < 1e-3 for p in probes), probes


def test_eos_ends_a_sequence_as_transformers_does(exported):
    """EOS chosen as the token prompt 0 writes at step 2: that row stops there (then pads), the others go on."""
    model, files = exported["llama"]
    tok = tiny_lm.tokenizer()
    ids, mask = encode(tok, tiny_lm.PROMPTS, tiny_lm.EOS)
    first = reference_steps(model, ids, mask, NEW, None, tiny_lm.EOS)
    eos = int(first.ids[0, 2])
    assert eos not in first.ids[0, :2].tolist()
    ref = reference_steps(model, ids, mask, NEW, eos, tiny_lm.EOS)
    got = OrtDecoder(files, eos_token_id=eos, pad_token_id=tiny_lm.EOS).greedy(ids, mask, NEW)
    assert got.lengths == ref.lengths and got.lengths[0] == 3 and max(got.lengths) > 3
    assert got.ids.shape == ref.ids.shape
    np.testing.assert_array_equal(got.ids, ref.ids)
    assert set(got.ids[0, 3:].tolist()) <= {tiny_lm.EOS}  # after its EOS a row holds the pad token


def test_io_binding_decodes_the_same_tokens(exported):
    """The cache bound as OrtValues between steps (on CPU here; the same code keeps it on the GPU under CUDA)."""
    model, files = exported["llama"]
    ids, mask = encode(tiny_lm.tokenizer(), tiny_lm.PROMPTS, tiny_lm.EOS)
    plain = OrtDecoder(files, eos_token_id=tiny_lm.EOS).greedy(ids, mask, NEW)
    bound_gen = OrtDecoder(files, eos_token_id=tiny_lm.EOS, io_binding=True)
    bound = bound_gen.greedy(ids, mask, NEW)
    assert bound_gen.device_type == "cpu" and bound_gen.providers() == ["CPUExecutionProvider"]
    np.testing.assert_array_equal(bound.ids, plain.ids)
    assert bound.lengths == plain.lengths
    assert max(float(np.abs(a - b).max()) for a, b in zip(bound.logits, plain.logits)) < 1e-5


def test_positions_from_a_left_padded_mask():
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(position_ids(mask), [[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]])


def test_no_cache_form_is_the_plain_forward(tmp_path):
    model = tiny_lm.model("llama")
    files = export_decoder(model, model.config, tmp_path, with_past=False)
    gen = OrtDecoder(files, eos_token_id=tiny_lm.EOS)
    assert gen.inputs == ["input_ids", "attention_mask", "position_ids"] and gen.outputs == ["logits"]
    assert files.cache is None and read_layout(tmp_path / "model.onnx")["with_past"] is False
    runs, probes = check_generation(model, tiny_lm.tokenizer(), files, tiny_lm.PROMPTS[:2], max_new_tokens=5)
    assert all(r.ok for r in runs) and all(p.same for r in runs for p in r.prompts)
    assert probes == []  # no cache: nothing to probe


def test_the_model_comes_back_in_the_mode_it_was_given(exported, tmp_path):
    """Exporting must not turn the model's dropout on for the generate / forward calls that follow it."""
    model, _ = exported["gpt2"]
    assert not any(m.training for m in model.modules())  # eval in, eval out (the fixture exported it)
    model.train()
    export_decoder(model, model.config, tmp_path, opset=18)
    assert all(m.training for m in model.modules())
    model.eval()


def test_external_data_is_one_file_beside_the_graph(tmp_path):
    model = tiny_lm.model("gpt2")
    files = export_decoder(model, model.config, tmp_path, external_data=True)
    assert files.external_data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    graph = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    places = {
        e.value
        for t in graph.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
    }
    assert "model.onnx.data" in places
    runs, _ = check_generation(model, tiny_lm.tokenizer(), files, tiny_lm.PROMPTS[:1], max_new_tokens=4, probes=False)
    assert runs[0].ok and runs[0].prompts[0].same


def test_the_dynamo_exporter_writes_the_same_interface(tmp_path):
    """exporter="dynamo" (what "auto" falls back on): the same names and dims, the same tokens."""
    model = tiny_lm.model("llama")
    files = export_decoder(model, model.config, tmp_path, exporter="dynamo")
    assert files.exporter == "dynamo"
    sess = OrtDecoder(files).session
    ins = {i.name: i.shape for i in sess.get_inputs()}
    assert list(ins)[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert ins["attention_mask"] == ["batch", "past_sequence + sequence"]
    assert ins["past_key_values.1.value"] == ["batch", 2, "past_sequence", 8]
    assert [o.name for o in sess.get_outputs()] == files.io["model"][len(ins) :]
    runs, probes = check_generation(model, tiny_lm.tokenizer(), files, tiny_lm.PROMPTS[:3], max_new_tokens=NEW)
    assert all(r.ok for r in runs) and all(p.same for r in runs for p in r.prompts)
    assert all(p["ok"] for p in probes) and 0 in {p["past"] for p in probes}


def test_a_sliding_window_shorter_than_the_text(tmp_path):
    """transformers' cache drops keys past the window (4 here); the file keeps them all and its attention mask
    hides them, as transformers' sliding mask does: the same tokens 8 steps past the window."""
    model = tiny_lm.model("mistral")
    files = export_decoder(model, model.config, tmp_path)
    runs, probes = check_generation(model, tiny_lm.tokenizer(), files, tiny_lm.PROMPTS[:3], max_new_tokens=NEW)
    assert all(r.ok for r in runs) and all(p.same for r in runs for p in r.prompts)
    assert max(len(p.onnx_ids) for p in runs[0].prompts) > model.config.sliding_window
    assert all(p["ok"] for p in probes)
    # the window matters here: without it transformers writes other tokens
    ids, mask = encode(tiny_lm.tokenizer(), tiny_lm.PROMPTS[:3], tiny_lm.EOS)
    model.config.sliding_window = None
    unwindowed = reference_steps(model, ids, mask, NEW, tiny_lm.EOS, tiny_lm.EOS)
    assert [list(r[:n]) for r, n in zip(unwindowed.ids, unwindowed.lengths)] != [p.onnx_ids for p in runs[1].prompts]


def test_mixture_of_experts_routes_every_token_in_the_file(tmp_path):
    """The experts are exported through batched_mm (one graph for any routing), not the eager loop the trace would
    freeze to the dummy input's experts; the model's own implementation is back after the export."""
    model = tiny_lm.model("mixtral")
    before = model.config._experts_implementation
    files = export_decoder(model, model.config, tmp_path)
    assert model.config._experts_implementation == before
    assert any("batched_mm" in w for w in files.warnings) and files.exporter == "torchscript"
    runs, probes = check_generation(model, tiny_lm.tokenizer(), files, tiny_lm.PROMPTS[:3], max_new_tokens=NEW)
    assert all(r.ok for r in runs) and all(p.same for r in runs for p in r.prompts)
    assert all(p["ok"] for p in probes)


def test_when_every_exporter_fails_the_error_names_each(tmp_path, monkeypatch):
    from studio.errors import ExportError
    from studio.generate import decoder

    def broken(name, *args):
        raise RuntimeError(f"{name} cannot")

    monkeypatch.setattr(decoder, "_torch_export", broken)
    model = tiny_lm.model("llama")
    with pytest.raises(ExportError, match="torchscript: RuntimeError: torchscript cannot; dynamo: RuntimeError"):
        export_decoder(model, model.config, tmp_path)
    assert list(tmp_path.iterdir()) == []  # no file, no temporary folder left


def test_facts_keep_each_architectures_own_layout():
    import transformers as tf

    falcon_mqa = decoder_facts(tf.FalconConfig(hidden_size=32, num_attention_heads=4, multi_query=True))
    assert falcon_mqa.kv_heads == 1 and falcon_mqa.position_ids
    falcon_new = tf.FalconConfig(hidden_size=32, num_attention_heads=4, new_decoder_architecture=True, num_kv_heads=2)
    assert decoder_facts(falcon_new).kv_heads == 2
    assert not decoder_facts(tf.FalconConfig(hidden_size=32, num_attention_heads=4, alibi=True)).position_ids
    gemma = decoder_facts(tf.GemmaConfig(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=24))
    assert (gemma.kv_heads, gemma.head_dim) == (1, 24)
    assert decoder_facts(tf.GPTBigCodeConfig(n_embd=32, n_head=4, multi_query=True)).kv_heads == 1
    assert not decoder_facts(tf.BloomConfig(hidden_size=32, n_head=4)).position_ids
    phi3 = decoder_facts(tf.Phi3Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2))
    assert (phi3.kv_heads, phi3.head_dim) == (2, 8)


def test_architectures_without_a_kv_cache_are_refused_with_the_reason(tmp_path):
    import transformers as tf

    with pytest.raises(GenerationRefused, match="mamba: .*not a key/value cache"):
        decoder_facts(tf.MambaConfig(hidden_size=32, num_hidden_layers=2))
    with pytest.raises(GenerationRefused, match="encoder-decoder.*text2text-generation"):
        decoder_facts(tf.T5Config(d_model=32, num_layers=2, num_heads=2))
    assert not list(tmp_path.iterdir())
