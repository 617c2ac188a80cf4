"""A GPT-2 trained in the fixture on the standard library's own docstrings (tests/trained_gpt2.py: real text
nobody here wrote, a byte-level BPE trained on it), converted the way a user converts it (`studio.convert` on
the folder and a CSV of real prompts, task detected from GPT2LMHeadModel), then judged against transformers'
own `generate`, called here: its greedy continuation of every prompt, token for token, through the file's cache
by a plain ONNX Runtime loop written without studio.generate (tiny_lm_archs.ort_greedy), and the studio's own
generation verdict in the report. The model is not degenerate: its loss fell, its continuations differ."""

from __future__ import annotations

import json

import pytest
import tiny_lm_archs
import torch
import trained_gpt2 as G

NEW_TOKENS = 12


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    return G.train(tmp_path_factory.mktemp("gpt2-stdlib") / "model")


@pytest.fixture(scope="session")
def reference(trained):
    """transformers' greedy continuation of each prompt: (prompt ids, new ids up to and with EOS)."""
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(str(trained.folder), local_files_only=True).eval()
    tok = tf.AutoTokenizer.from_pretrained(str(trained.folder), local_files_only=True)
    eos = model.config.eos_token_id
    out = []
    for p in G.PROMPTS:
        ids = tok(p, return_tensors="pt")
        with torch.no_grad():
            seq = model.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1, pad_token_id=eos)
        new = seq[0, ids["input_ids"].shape[1] :].tolist()
        out.append((ids["input_ids"][0].tolist(), new[: new.index(eos) + 1] if eos in new else new))
    return out


@pytest.fixture(scope="session")
def converted(trained, tmp_path_factory):
    import pandas as pd

    from studio import ConvertSpec, convert

    root = tmp_path_factory.mktemp("gpt2-stdlib-out")
    sample = root / "prompts.csv"
    pd.DataFrame({"id": range(len(G.PROMPTS)), "prompt": G.PROMPTS}).to_csv(sample, index=False)
    spec = ConvertSpec(
        checkpoint=str(trained.folder),
        data=str(sample),
        out=str(root / "out"),
        roles={"id": "ignore", "prompt": "text"},
        max_new_tokens=NEW_TOKENS,
        latency_budget_s=0.05,
        cuda=False,
    )
    return convert(spec), root / "out"


def test_the_trained_model_learned_and_is_not_degenerate(trained, reference):
    assert trained.characters > 100_000 and trained.tokens > 50_000  # real text, not a toy string
    assert trained.last_loss < trained.first_loss - 1.5, (trained.first_loss, trained.last_loss)
    continuations = [tuple(new) for _, new in reference]
    # a small model may end two prompts alike; a degenerate one continues them all alike, or loops on one token
    assert len(set(continuations)) >= len(continuations) - 1, continuations
    assert not any(c[i] == c[i + 1] == c[i + 2] for c in continuations for i in range(len(c) - 2)), continuations
    tokens = [t for c in continuations for t in c]
    assert len(set(tokens)) >= 6, tokens  # not one token repeated


def test_the_converted_file_continues_every_prompt_like_transformers(trained, reference, converted):
    report, out = converted
    assert report.generation is not None and report.generation.task == "text-generation"
    assert report.ok, report.failed_checks
    files = {p.name for p in out.iterdir()}
    assert {"model.onnx", "tokenizer.json", "config.json", "generation_config.json"} <= files, sorted(files)
    eos = json.loads((trained.folder / "config.json").read_text())["eos_token_id"]
    for (prompt_ids, want), text in zip(reference, G.PROMPTS):
        got, _, _ = tiny_lm_archs.ort_greedy(out / "model.onnx", prompt_ids, NEW_TOKENS, eos)
        assert got == want, f"{text!r}: ONNX {got} vs transformers {want}"


def test_the_report_says_every_prompt_generated_the_same_tokens(reference, converted):
    report, _ = converted
    gen = report.generation
    assert gen is not None and gen.ok
    by_mode = {run.mode: run for run in gen.runs}
    one = by_mode["one by one"]
    assert one.ok and len(one.prompts) == len(G.PROMPTS)
    for result, (_, want) in zip(one.prompts, reference):
        assert result.same and list(result.reference_ids) == want and list(result.onnx_ids) == want
