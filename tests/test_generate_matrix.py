"""The architecture matrix of issue 27 §5: every decoder and encoder-decoder family, as a tiny random model built
from transformers' own config class (tests/tiny_lm_archs.py), exported with its cache at opset 18 (a few at 17)
through studio.generate's exporters, then decoded greedily with ONNX Runtime through the files and their cache.

The reference is transformers' own `generate` (do_sample=False, its cache, its default attention) on a separate
copy of the model loaded from the folder, called here, not through the studio's reference code. Per family:
- the files and their I/O names are the convention optimum writes (decoders: one model.onnx with input_ids,
  attention_mask, position_ids where the family takes them, past_key_values.{i}.key/.value -> logits,
  present.{i}.key/.value; encoder-decoders: encoder_model.onnx + decoders with past, .decoder / .encoder names),
  the cache dims are [batch, kv_heads, past, head_dim] with the config's own kv-head count (GQA / MQA kept);
- each prompt alone: the same new token ids as generate, and every step's logits within float32 noise
  (random weights tie, the logits do not: a cache bug that left the argmax alone still fails here);
- the prompts as one padded batch (left padding for decoders), the same.
A family the studio refuses must be refused with a clean StudioError (tested on mamba, which keeps no key/value
cache, and on an encoder-decoder given to the decoder exporter). 4 new tokens, 3 prompts (2 alone, 3 batched).
The same matrix with its table of verdicts: benchmarks/generation.py --matrix.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tiny_lm_archs as T
import torch

NEW_TOKENS = 4
PROMPTS = T.PROMPTS[:3]
OPSET17 = ("gpt2", "llama", "falcon", "gemma2", "t5", "bart")
CASES = [(f, 18) for f in T.FAMILIES] + [(f, 17) for f in OPSET17]
# families without position_ids in optimum's convention (ALiBi: positions come from the mask)
NO_POSITION_IDS = {"bloom"}
ATOL, RTOL = 1e-4, 1e-3


@pytest.fixture(scope="module")
def folder_of(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-archs")
    made: dict[str, object] = {}

    def get(family: str):
        if family not in made:
            made[family] = T.make_folder(root / family, family)
        return made[family]

    return get


def _load(folder):
    import transformers as tf

    config = tf.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    auto = tf.AutoModelForSeq2SeqLM if config.is_encoder_decoder else tf.AutoModelForCausalLM
    model = auto.from_pretrained(str(folder), local_files_only=True).eval()
    return config, model, tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _export(family, model, config, out, opset):
    if T.is_seq2seq(family):
        from studio.generate.ort_seq2seq import OrtSeq2Seq
        from studio.generate.seq2seq import export_seq2seq

        files = export_seq2seq(model, config, out, opset=opset)
        return files, OrtSeq2Seq(files, eos_token_id=T.EOS, pad_token_id=T.PAD)
    from studio.generate.decoder import export_decoder
    from studio.generate.ort_decoder import OrtDecoder

    files = export_decoder(model, config, out, opset=opset)
    return files, OrtDecoder(files, eos_token_id=T.EOS, pad_token_id=T.PAD)


def _hf_greedy(model, enc, seq2seq: bool):
    """transformers' generate: per row the new ids up to and with the first EOS, and the raw logits per step."""
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.from_numpy(enc["input_ids"]),
            attention_mask=torch.from_numpy(enc["attention_mask"]),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            num_beams=1,
            eos_token_id=T.EOS,
            pad_token_id=T.PAD,
            output_logits=True,
            return_dict_in_generate=True,
        )
    start = 1 if seq2seq else enc["input_ids"].shape[1]  # seq2seq: the decoder start token is not generated
    rows = []
    for row in out.sequences[:, start:].tolist():
        rows.append(row[: row.index(T.EOS) + 1] if T.EOS in row else row)
    return rows, [s.float().numpy() for s in out.logits]


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _kv_heads(config) -> int:
    # the config itself: transformers 5.25's get_text_config(decoder=True) on a flat encoder-decoder config
    # (BART, Marian, ...) returns a copy with decoder_attention_heads / decoder_layers at their defaults (16, 12)
    for name in ("num_key_value_heads", "num_kv_heads", "decoder_attention_heads", "num_heads"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return int(config.num_attention_heads)


def _decoder_layers(config) -> int:
    for name in ("decoder_layers", "num_decoder_layers", "num_hidden_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise AssertionError("no layer count in the config")


def _check_decoder_names(family, files, config):
    assert files.files == {"model": "model.onnx"} and files.cache is not None
    graph = onnx.load(str(files.folder / "model.onnx"), load_external_data=False).graph
    layers = config.num_hidden_layers
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    want_in = ["input_ids", "attention_mask"] + ([] if family in NO_POSITION_IDS else ["position_ids"]) + past
    assert [i.name for i in graph.input] == want_in
    assert [o.name for o in graph.output] == ["logits"] + present
    head_dim = files.cache.head_dim
    for vi in [i for i in graph.input if i.name in past]:
        dims = _dims(vi)
        assert len(dims) == 4 and isinstance(dims[0], str) and isinstance(dims[2], str), (vi.name, dims)
        assert dims[1] == _kv_heads(config) == files.cache.kv_heads, (vi.name, dims, _kv_heads(config))
        assert dims[3] == head_dim
    return graph


def _check_seq2seq_names(files, config):
    assert files.cache is not None
    names = set(files.files.values())
    assert "encoder_model.onnx" in names
    assert names & {"decoder_model_merged.onnx", "decoder_with_past_model.onnx"}, names
    layers = _decoder_layers(config)
    enc = onnx.load(str(files.folder / "encoder_model.onnx"), load_external_data=False).graph
    assert {i.name for i in enc.input} == {"input_ids", "attention_mask"}
    assert [o.name for o in enc.output] == ["last_hidden_state"]
    with_past = files.files.get("decoder_with_past") or files.files["decoder"]
    graph = onnx.load(str(files.folder / with_past), load_external_data=False).graph
    self_past = [f"past_key_values.{i}.decoder.{kv}" for i in range(layers) for kv in ("key", "value")]
    cross_past = [f"past_key_values.{i}.encoder.{kv}" for i in range(layers) for kv in ("key", "value")]
    ins = {i.name for i in graph.input}
    assert {"input_ids", "encoder_attention_mask"} <= ins and set(self_past + cross_past) <= ins, sorted(ins)
    outs = [o.name for o in graph.output]
    assert outs[0] == "logits"
    assert {f"present.{i}.decoder.{kv}" for i in range(layers) for kv in ("key", "value")} <= set(outs)
    for vi in [i for i in graph.input if i.name in self_past]:
        assert _dims(vi)[1] == _kv_heads(config), (vi.name, _dims(vi))


def _same(ref_rows, ref_logits, steps, where: str):
    for b, want in enumerate(ref_rows):
        got = steps.ids[b, : steps.lengths[b]].tolist()
        assert got == want, f"{where}, row {b}: ORT {got} vs transformers {want}"
        for t in range(len(want)):
            a, r = steps.logits[t][b], ref_logits[t][b]
            assert np.allclose(a, r, atol=ATOL, rtol=RTOL), (
                f"{where}, row {b}, step {t}: logits differ by {np.abs(a - r).max():.3g}"
            )


@pytest.mark.parametrize(("family", "opset"), CASES, ids=[f"{f}-opset{o}" for f, o in CASES])
def test_family_generates_like_transformers(family, opset, folder_of, tmp_path):
    folder = folder_of(family)
    config, reference, tok = _load(folder)
    _, exported, _ = _load(folder)  # the exporter gets its own copy: the reference stays untouched
    files, generator = _export(family, exported, config, tmp_path / "out", opset)
    if T.is_seq2seq(family):
        _check_seq2seq_names(files, config)
    else:
        _check_decoder_names(family, files, config)
    assert generator.providers()[0] == "CPUExecutionProvider"
    for k, prompt in enumerate(PROMPTS[::2]):  # the longest and the shortest alone, then all three padded
        enc = {k_: v.astype(np.int64) for k_, v in tok(prompt, return_tensors="np").items()}
        rows, logits = _hf_greedy(reference, enc, T.is_seq2seq(family))
        steps = generator.greedy(enc["input_ids"], enc["attention_mask"], NEW_TOKENS)
        _same(rows, logits, steps, f"{family} opset {opset}, prompt {k}")
    enc = {k_: v.astype(np.int64) for k_, v in tok(PROMPTS, return_tensors="np", padding=True).items()}
    assert (enc["attention_mask"] == 0).any()  # really padded
    if not T.is_seq2seq(family):
        assert (enc["attention_mask"][:, 0] == 0).any()  # on the left
    rows, logits = _hf_greedy(reference, enc, T.is_seq2seq(family))
    steps = generator.greedy(enc["input_ids"], enc["attention_mask"], NEW_TOKENS)
    _same(rows, logits, steps, f"{family} opset {opset}, padded batch of {len(PROMPTS)}")


def _mamba_folder(path):
    import transformers as tf

    config = tf.MambaConfig(
        vocab_size=T.tiny.vocab_size(), hidden_size=32, num_hidden_layers=2, state_size=4, pad_token_id=T.PAD
    )
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(str(path))
    return path


def test_a_model_without_a_kv_cache_is_refused_cleanly(tmp_path):
    from studio.errors import StudioError
    from studio.generate.decoder import export_decoder

    folder = _mamba_folder(tmp_path / "mamba")
    import transformers as tf

    config = tf.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    model = tf.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    out = tmp_path / "out"
    with pytest.raises(StudioError) as info:
        export_decoder(model, config, out)
    assert "mamba" in str(info.value)
    assert not out.exists() or not list(out.glob("*.onnx"))  # nothing half-written


def test_an_encoder_decoder_given_to_the_decoder_exporter_is_refused_cleanly(folder_of, tmp_path):
    from studio.errors import StudioError
    from studio.generate.decoder import export_decoder

    config, model, _ = _load(folder_of("bart"))
    with pytest.raises(StudioError) as info:
        export_decoder(model, config, tmp_path / "out")
    assert "encoder-decoder" in str(info.value)
