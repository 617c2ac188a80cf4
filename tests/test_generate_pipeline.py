"""A generator end to end through the one pipeline (issue 27): `studio.convert` and `studio convert` on tiny GPT-2
and Llama folders saved with save_pretrained beside a byte-level BPE tokenizer trained here (the `tokenizers`
library, on the standard library's own docstrings: nothing is downloaded).

The references are transformers' own: its greedy `generate` on the checkpoint folder, loaded again here, and the
graph's I/O names against optimum's `text-generation-with-past` convention, never the studio's own wrapper.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import studio
from studio.errors import BatchError, StudioError
from studio.spec import ConvertSpec

PROMPTS = ["Serialize obj as a JSON formatted stream", "Return the path of the file", "a new string"]
NEW_TOKENS = 8
FAST = dict(max_new_tokens=NEW_TOKENS, latency_budget_s=0.02, cuda=False)
ROOT = Path(__file__).resolve().parents[1]


def _tokenizer(folder: Path, specials: tuple[str, ...] = ("<|endoftext|>",)):
    import collections
    import pathlib
    import string
    import textwrap

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    docs = [inspect.getdoc(m) or "" for m in (json, pathlib, collections, textwrap, string)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer)
    if len(specials) == 3:  # an encoder-decoder's: pad, EOS, BOS
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token=specials[0], eos_token=specials[1], bos_token=specials[2]
        )
    else:  # no pad token, as GPT-2's own
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=specials[0], bos_token=specials[0])
    fast.save_pretrained(str(folder))
    return fast


def _bart_folder(folder: Path) -> Path:
    import transformers as tf

    torch.manual_seed(0)
    tok = _tokenizer(folder, ("<pad>", "</s>", "<s>"))
    cfg = tf.BartConfig(
        vocab_size=len(tok),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        decoder_start_token_id=1,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
        tie_word_embeddings=False,
    )
    model = tf.BartForConditionalGeneration(cfg)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    model.eval().save_pretrained(str(folder))
    return folder


def _lm_folder(kind: str, folder: Path) -> Path:
    import transformers as tf

    torch.manual_seed(0)
    tok = _tokenizer(folder)
    common = dict(vocab_size=len(tok), bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
    if kind == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128, **common))
    else:  # GQA: 4 attention heads, 2 key/value heads
        cfg = tf.LlamaConfig(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            **common,
        )
        model = tf.LlamaForCausalLM(cfg)
    with torch.no_grad():  # random tiny models tie often: far-apart logits make greedy decoding a real test
        model.get_output_embeddings().weight.mul_(8.0)
    model.eval().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    csv = root / "prompts.csv"
    csv.write_text("id,prompt\n" + "".join(f"{i},{p}\n" for i, p in enumerate(PROMPTS, 1)))
    one = root / "one.csv"
    one.write_text(f"id,prompt\n1,{PROMPTS[0]}\n")
    return {
        "gpt2": _lm_folder("gpt2", root / "gpt2"),
        "llama": _lm_folder("llama", root / "llama"),
        "csv": csv,
        "one": one,
        "root": root,
    }


@pytest.fixture(scope="module")
def gpt2_out(folders):
    out = folders["root"] / "out-gpt2"
    report = studio.convert(ConvertSpec(str(folders["gpt2"]), str(folders["csv"]), out=str(out), **FAST))
    return report, out


@functools.cache
def _reference(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder)), AutoModelForCausalLM.from_pretrained(str(folder)).eval()


def _generate(folder: Path, prompt: str) -> list[int]:
    """transformers' greedy generate on the checkpoint folder itself (the independent reference)."""
    tok, model = _reference(folder)
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=0)
    return out[0, ids["input_ids"].shape[1] :].tolist()


def _names(graph_side) -> list[str]:
    return [t.name for t in graph_side]


def test_a_gpt2_folder_is_a_generator_verified_by_generating(gpt2_out, folders):
    report, out = gpt2_out
    assert report.ok and report.failed_checks == []
    assert report.source["task"] == "text-generation"
    assert "GPT2LMHeadModel" in report.source["task_reason"] and "generates text" in report.source["task_reason"]
    g = report.generation
    assert g is not None and g.ok and g.with_past and g.max_new_tokens == NEW_TOKENS
    assert [r.mode for r in g.runs] == ["one by one", "batched"] and all(r.ok for r in g.runs)
    for i, p in enumerate(g.runs[0].prompts):  # transformers' generate, run here on the folder, is the truth
        assert p.same and p.onnx_ids == p.reference_ids == _generate(folders["gpt2"], PROMPTS[i])[: len(p.onnx_ids)]
    assert g.probes and all(p["ok"] for p in g.probes) and report.dynamic.ok
    assert max(p["past"] for p in g.probes) > 0  # past lengths beyond a prefill are probed
    assert report.parity.ok and report.parity.outputs[0].name == "logits" and report.parity.rows == len(PROMPTS)
    assert any(s.engine == "onnxruntime" and s.tokens_per_s for s in g.speed)
    cpu = [s for s in g.speed if s.provider != "CUDAExecutionProvider"]  # the check's own decodes, no others
    assert [s.batch for s in cpu] == [1, 1, len(PROMPTS), len(PROMPTS)] and cpu[0].iterations == cpu[1].iterations
    for s in cpu:  # a decode whose PyTorch side ran beside the export is left out, and said; never made up
        assert 1 <= s.iterations <= (len(PROMPTS) if s.batch == 1 else 1), s
        assert s.batch > 1 or s.iterations == len(PROMPTS) or "left out" in s.note, s
    assert all("generation check" in (s.note or "") and s.ttft_ms and s.tokens_per_s for s in cpu), cpu
    saved = json.loads((out / "report.json").read_text())
    assert saved["ok"] and saved["generation"]["ok"] and saved["generation"]["task"] == "text-generation"


def test_the_file_has_optimums_names_and_the_folder_loads_as_the_ecosystem_reads_it(gpt2_out):
    report, out = gpt2_out
    layers = 2
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    inputs = _names(report.graph.inputs)
    assert inputs[:2] == ["input_ids", "attention_mask"] and inputs[-len(past) :] == past
    assert set(inputs) <= {"input_ids", "attention_mask", "position_ids", *past}
    assert _names(report.graph.outputs) == ["logits", *present]
    shapes = {t.name: t.shape for t in report.graph.inputs}
    assert shapes["past_key_values.0.key"][1] == 2 and shapes["past_key_values.0.key"][3] == 16  # heads, head dim
    for name in ("model.onnx", "tokenizer.json", "config.json", "generation_config.json", "inference_example.py"):
        assert (out / name).is_file(), name
    assert set(report.files.values()) >= {"model.onnx", "config.json", "generation_config.json", "inference_example.py"}
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(out))(PROMPTS[0])["input_ids"]  # the tokenizer loads from the folder
    md = (out / "report.md").read_text()
    assert "## Generation — PASS" in md and "### Prompts (one by one)" in md and "tokens/s" in md


def test_inference_example_generates_the_tokens_transformers_generates(gpt2_out, folders):
    _, out = gpt2_out
    run = subprocess.run(
        [sys.executable, str(out / "inference_example.py")], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    printed = [json.loads(m) for m in re.findall(r"new token ids: (\[[0-9, ]*\])", run.stdout)]
    assert len(printed) == len(PROMPTS)
    for prompt, ids in zip(PROMPTS, printed):
        assert ids == _generate(folders["gpt2"], prompt)


def test_studio_convert_on_a_llama_folder_keeps_its_kv_heads(folders):
    out = folders["root"] / "out-llama"
    cmd = [sys.executable, "-m", "studio", "convert", str(folders["llama"]), "--data", str(folders["csv"])]
    cmd += ["--out", str(out), "--max-new-tokens", "6", "--latency-budget", "0.02", "--no-cuda", "--quiet"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "generate PASS" in run.stdout and "task     text-generation" in run.stdout
    saved = json.loads((out / "report.json").read_text())
    g = saved["generation"]
    assert saved["ok"] and g["ok"] and g["max_new_tokens"] == 6 and g["cache"]["kv_heads"] == 2
    shapes = {t["name"]: t["shape"] for t in saved["graph"]["inputs"]}
    assert "position_ids" in shapes and shapes["past_key_values.1.value"][1:] == [2, "past_sequence", 8]


def test_a_bart_folder_is_an_encoder_and_two_decoder_files_verified_by_generating(folders):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    bart = _bart_folder(folders["root"] / "bart")
    out = folders["root"] / "out-bart"
    report = studio.convert(ConvertSpec(str(bart), str(folders["csv"]), out=str(out), **{**FAST, "max_new_tokens": 6}))
    g = report.generation
    assert report.ok and g is not None and g.ok and report.source["task"] == "text2text-generation"
    files = {
        "encoder": "encoder_model.onnx",
        "decoder": "decoder_model.onnx",
        "decoder_with_past": "decoder_with_past_model.onnx",
    }
    assert g.files == files and all((out / f).is_file() for f in files.values())
    assert g.io["encoder"] == ["input_ids", "attention_mask", "last_hidden_state"]
    assert "past_key_values.0.encoder.key" in g.io["decoder_with_past"] and "present.1.decoder.value" in g.io["decoder"]
    assert [d.name for d in report.parity.outputs] == ["last_hidden_state", "logits"] and report.parity.ok
    run = subprocess.run(
        [sys.executable, str(out / "inference_example.py")], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    printed = [json.loads(m) for m in re.findall(r"new token ids: (\[[0-9, ]*\])", run.stdout)]
    tok, model = AutoTokenizer.from_pretrained(str(bart)), AutoModelForSeq2SeqLM.from_pretrained(str(bart)).eval()
    with torch.no_grad():
        want = [
            model.generate(**tok(p, return_tensors="pt"), do_sample=False, max_new_tokens=6)[0, 1:].tolist()
            for p in PROMPTS
        ]
    assert printed == want


def test_no_cache_exports_the_plain_forward_checked_as_logits(folders):
    out = folders["root"] / "out-nocache"
    report = studio.convert(ConvertSpec(str(folders["gpt2"]), str(folders["csv"]), out=str(out), cache=False, **FAST))
    assert report.ok and report.generation is None
    assert _names(report.graph.outputs) == ["logits"]
    assert not [n for n in _names(report.graph.inputs) if n.startswith("past_key_values")]
    assert report.parity.ok and report.parity.outputs[0].argmax_agreement == 1.0
    assert "--no-cache" in report.source["task_reason"] and "plain forward" in report.source["task_reason"]
    assert any("EOS token" in w for w in report.warnings)  # GPT-2's tokenizer has no pad token: said


def test_feature_extraction_on_an_lm_folder_warns_naming_the_head(folders):
    out = folders["root"] / "out-fe"
    spec = ConvertSpec(str(folders["llama"]), str(folders["one"]), out=str(out), task="feature-extraction", **FAST)
    report = studio.convert(spec)
    assert report.generation is None and _names(report.graph.outputs) == ["last_hidden_state"]
    warned = [w for w in report.warnings if "`lm_head`" in w]
    assert warned and "cannot generate" in warned[0] and "LlamaForCausalLM" in warned[0]
    assert "cannot generate" in report.source["task_reason"]


def test_a_sample_without_a_text_column_is_refused_naming_the_file(folders, capsys):
    numbers = folders["root"] / "numbers.csv"
    numbers.write_text("id,price\n1,2.5\n2,3.5\n")
    with pytest.raises(BatchError, match=r"numbers\.csv: a text-generation model continues prompts"):
        studio.convert(ConvertSpec(str(folders["gpt2"]), str(numbers), out=str(folders["root"] / "o-n"), **FAST))
    from studio.cli import main

    assert main(["convert", str(folders["gpt2"]), "--data", str(numbers), "--out", str(folders["root"] / "o-n")]) == 2
    assert "numbers.csv" in capsys.readouterr().err
    assert not (folders["root"] / "o-n").exists()


def test_the_new_options_are_validated_and_taken_from_flags_and_manifests(tmp_path):
    for bad in (0, 5000, True, 2.5):
        with pytest.raises(StudioError, match="--max-new-tokens"):
            ConvertSpec("m", "d", max_new_tokens=bad).validated()
    with pytest.raises(StudioError, match="cache"):
        ConvertSpec("m", "d", cache="yes").validated()  # type: ignore[arg-type]
    with pytest.raises(StudioError, match="Task"):
        ConvertSpec("m", "d", task="text-generation-with-past").validated()
    from studio.cli.flags import build_parser, spec_from_args

    args = build_parser().parse_args(["convert", "m", "--data", "d", "--task", "text-generation", "--no-cache"])
    spec = spec_from_args(args)
    assert spec.task == "text-generation" and spec.cache is False and spec.max_new_tokens == 20
    from studio.jobs.manifest import read_manifest

    (tmp_path / "m").mkdir()
    (tmp_path / "d.csv").write_text("prompt\nhello there\n")
    line = {"checkpoint": "m", "data": "d.csv", "task": "text2text-generation", "max_new_tokens": 7, "cache": False}
    (tmp_path / "jobs.jsonl").write_text(json.dumps(line) + "\n")
    (entry,) = read_manifest(tmp_path / "jobs.jsonl")
    assert (entry.spec.task, entry.spec.max_new_tokens, entry.spec.cache) == ("text2text-generation", 7, False)


def test_the_generation_rows_escape_nothing_and_say_near_ties():
    from studio.report import generation
    from studio.report.model import GenerationInfo, GenerationRun, PromptResult, TokenDiff

    tie = TokenDiff(prompt=0, step=3, expected=5, got=6, expected_text="a", got_text="b", margin=1e-6, near_tie=True)
    run = GenerationRun("one by one", ok=True, prompts=[PromptResult(0, "p |x|", divergence=tie)], identical_share=0.5)
    info = GenerationInfo(task="text-generation", with_past=True, ok=True, runs=[run])
    (row,) = generation.prompt_rows(run)
    assert row[1] == "p |x|" and row[4] == "near tie" and "step 3" in row[6] and "near tie" in row[6]
    assert generation.first_divergences(info) == [f"one by one, prompt 0, {generation.divergence_text(tie)}"]
    assert generation.io_summary(["input_ids", "past_key_values.0.key", "past_key_values.1.key"]) == (
        "input_ids, past_key_values.{0..1}.key"
    )
    assert generation.probe_rows(
        GenerationInfo("text-generation", True, False, probes=[{"batch": 2, "ok": False, "max_abs_diff": float("nan")}])
    )[0][3:5] == ["FAIL", "nan"]  # a NaN stays a NaN


def test_the_pytorch_side_beside_the_export_equals_running_it_after_and_a_failure_is_reported(folders):
    """The thread's first-step logits and transformers' decodes are those of running them in the main thread
    afterwards; a thread that fails leaves its work to its stage and says so."""
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.generate.reference import encode, forward_logits
    from studio.generate.run import Ahead, torch_threads
    from studio.generate.verify import BATCHED, ONE_BY_ONE, reference_decodes

    model = AutoModelForCausalLM.from_pretrained(folders["gpt2"]).eval()
    tok = AutoTokenizer.from_pretrained(folders["gpt2"])
    ahead = Ahead(model, tok, PROMPTS, 4, 0, 1)
    assert Ahead.fits("text-generation", model) and not Ahead.fits("text2text-generation", model)
    ahead.start()
    assert ahead.join() == [] and ahead.error is None
    with torch_threads(1):  # as the thread ran (the pipeline gives both the studio's threads)
        after = reference_decodes(model, tok, PROMPTS, 4, {})
        forwards = [forward_logits(model, *encode(tok, [text], 0))[0] for text in PROMPTS]
    for want, got in zip(after[ONE_BY_ONE] + after[BATCHED], ahead.references[ONE_BY_ONE] + ahead.references[BATCHED]):
        assert np.array_equal(want.ids, got.ids) and all(np.array_equal(a, b) for a, b in zip(want.logits, got.logits))
    assert len(ahead.forwards) == len(PROMPTS) and all(map(np.array_equal, forwards, ahead.forwards))
    broken = Ahead(model, None, PROMPTS, 4, 0, 1)  # no tokenizer: the thread fails at once
    broken.start()
    [warning] = broken.join()
    assert "AttributeError" in warning and "redone" in warning and broken.forwards == [] and broken.references == {}
