"""The generation verdict (studio.generate.verify) fails what is wrong and says where: a file whose logits are
perturbed, a loop that feeds a wrong cache back; a near tie is named as such and passes; NaN stays NaN."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import tiny_lm
from onnx import helper, numpy_helper

from studio.generate.base import Steps
from studio.generate.decoder import export_decoder
from studio.generate.ort_decoder import OrtDecoder
from studio.generate.reference import encode
from studio.generate.verify import check_generation, compare_steps, margin_at, max_abs_diff, step_feeds
from studio.report.model import GenerationInfo

NEW = 6


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    model = tiny_lm.model("llama")
    return model, export_decoder(model, model.config, tmp_path_factory.mktemp("llama"))


def perturbed(files, folder, bias: np.ndarray):
    """A copy of the decoder whose logits get `bias` ([vocab]) added: an Add after the graph's logits."""
    model = onnx.load(str(files.folder / files.files["model"]))
    producer = next(n for n in model.graph.node if "logits" in n.output)
    producer.output[list(producer.output).index("logits")] = "logits_raw"
    model.graph.initializer.append(numpy_helper.from_array(bias.astype(np.float32), "logits_bias"))
    model.graph.node.append(helper.make_node("Add", ["logits_raw", "logits_bias"], ["logits"]))
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    return type(files)(**{**files.__dict__, "folder": folder})


def test_perturbed_logits_fail_naming_prompt_step_and_tokens(llama, tmp_path):
    model, files = llama
    tok = tiny_lm.tokenizer()
    word = "refund"
    bias = np.zeros(model.config.vocab_size)
    bias[tiny_lm.vocab()[word]] = 100.0
    runs, _ = check_generation(model, tok, perturbed(files, tmp_path, bias), tiny_lm.PROMPTS[:2], NEW, probes=False)
    for run in runs:
        assert not run.ok and run.identical_share is not None and run.identical_share < 1
        p = run.prompts[0]
        assert not p.same and p.onnx_ids[0] == tiny_lm.vocab()[word]
        d = p.divergence
        assert d is not None and (d.prompt, d.step) == (0, 0)
        assert d.got == tiny_lm.vocab()[word] and d.got_text == word
        assert d.expected == p.reference_ids[0] and d.expected_text == tok.decode([d.expected])
        assert d.margin is not None and d.margin > 0 and not d.near_tie
        assert p.max_logits_diff is not None and p.max_logits_diff >= 99
    assert [p.prompt for p in runs[1].prompts] == [0, 1]


class WrongCache(OrtDecoder):
    """Feeds each layer's values back as its keys: the first step (past 0) is right, the second is not."""

    def step(self, feeds):
        feeds = dict(feeds)
        for name in self.past_inputs:
            if name.endswith(".key"):
                feeds[name] = feeds[name[: -len("key")] + "value"]
        return super().step(feeds)


def test_a_wrong_cache_fed_back_fails_at_the_step_after_the_prompt(llama):
    model, files = llama
    tok = tiny_lm.tokenizer()
    gen = WrongCache(files, eos_token_id=tiny_lm.EOS, pad_token_id=tiny_lm.EOS)
    runs, probes = check_generation(model, tok, files, tiny_lm.PROMPTS[:3], NEW, ort_generator=gen)
    assert not any(r.ok for r in runs)
    diverged = [p for p in runs[0].prompts if not p.same]
    assert diverged and all(p.divergence is not None and p.divergence.step >= 1 for p in diverged)
    assert all(p.onnx_ids[0] == p.reference_ids[0] for p in runs[0].prompts)  # the prefill is still right
    d = diverged[0].divergence
    assert d is not None and d.expected != d.got and d.expected_text and d.got_text and not d.near_tie
    # the probes feed random pasts: past 0 still passes, a real past does not
    assert all(p["ok"] for p in probes if p["past"] == 0)
    assert not any(p["ok"] for p in probes if p["past"] > 0)


class WrongType(OrtDecoder):
    """Feeds int32 token ids where the file takes int64: ONNX Runtime raises (its errors are no RuntimeError)."""

    def step(self, feeds):
        return super().step({**feeds, "input_ids": feeds["input_ids"].astype(np.int32)})


def test_an_onnx_runtime_error_is_the_runs_error_not_a_crash(llama):
    model, files = llama
    gen = WrongType(files, eos_token_id=tiny_lm.EOS)
    runs, _ = check_generation(
        model, tiny_lm.tokenizer(), files, tiny_lm.PROMPTS[:2], 3, ort_generator=gen, probes=False
    )
    assert [r.mode for r in runs] == ["one by one", "batched"] and not any(r.ok for r in runs)
    assert all(r.error and r.error.startswith("InvalidArgument") and "int32" in r.error for r in runs)


def test_step_feeds_reproduce_the_diverging_step(llama):
    """The locator's inputs for step t: the file's last logits there are the loop's logits at step t."""
    model, files = llama
    gen = OrtDecoder(files, eos_token_id=tiny_lm.EOS)
    ids, mask = encode(tiny_lm.tokenizer(), tiny_lm.PROMPTS[:1], tiny_lm.EOS)
    decoded = gen.greedy(ids, mask, 4)
    assert decoded.lengths == [4]
    feeds = step_feeds(gen, ids[0], mask[0], decoded.ids[0].tolist(), 3)
    assert list(feeds) == gen.inputs and feeds["input_ids"].shape == (1, ids.shape[1] + 3)
    assert feeds["past_key_values.0.key"].shape[2] == 0
    np.testing.assert_allclose(gen.step(feeds)["logits"][0, -1], decoded.logits[3][0], atol=1e-4)


def steps(rows: list[list[int]], logits: list[np.ndarray]) -> Steps:
    return Steps(ids=np.array(rows, dtype=np.int64), logits=logits, lengths=[len(r) for r in rows])


def test_a_near_tie_is_reported_and_not_failed():
    vocab = 5
    first = np.array([[0.0, 5.0, 1.0, 2.0, 4.0]])
    tied = np.array([[0.0, 3.0, 1.0, 3.0 - 2e-6, 2.0]])  # 1 then 3, 2e-6 apart: within atol
    ref = steps([[1, 1]], [first, tied])
    got = steps([[1, 3]], [first, tied + np.array([[0, 0, 0, 3e-6, 0]])])
    run = compare_steps(ref, got, ["p"], "one by one", atol=1e-4, rtol=1e-3)
    p = run.prompts[0]
    assert run.ok and not p.same and p.divergence is not None
    assert p.divergence.near_tie and p.divergence.step == 1 and (p.divergence.expected, p.divergence.got) == (1, 3)
    assert p.divergence.margin == pytest.approx(2e-6, abs=1e-9)
    assert run.identical_share == 0.5 and vocab == first.shape[1]
    # the same choice with a real margin is a failure
    wide = np.array([[0.0, 3.0, 1.0, 2.0, 2.0]])
    run = compare_steps(steps([[1, 1]], [first, wide]), steps([[1, 3]], [first, wide]), ["p"], "batched", 1e-4, 1e-3)
    assert not run.ok and run.prompts[0].divergence is not None and not run.prompts[0].divergence.near_tie
    assert run.prompts[0].divergence.margin == pytest.approx(1.0)


def test_nan_logits_give_nan_never_a_number(llama, tmp_path):
    assert math.isnan(max_abs_diff(np.array([1.0, np.nan]), np.array([1.0, 2.0])))
    assert max_abs_diff(np.array([-np.inf, 1.0]), np.array([-np.inf, 1.5])) == 0.5
    assert math.isnan(margin_at(np.array([np.nan, 1.0, 2.0])))
    model, files = llama
    bias = np.zeros(model.config.vocab_size)
    bias[7] = np.nan
    runs, probes = check_generation(model, tiny_lm.tokenizer(), perturbed(files, tmp_path, bias), ["good price"], 3)
    p = runs[0].prompts[0]
    assert not runs[0].ok and p.max_logits_diff is not None and math.isnan(p.max_logits_diff)
    assert probes and all(math.isnan(x["max_abs_diff"]) and not x["ok"] for x in probes)
    info = GenerationInfo(task="text-generation", with_past=True, ok=False, runs=runs, probes=probes)
    assert info.runs[0].prompts[0].max_logits_diff != 0


def test_an_engine_that_stops_early_is_a_divergence():
    a = np.array([[0.0, 1.0, 3.0]])
    ref = Steps(ids=np.array([[2, 2, 2]]), logits=[a, a, a], lengths=[3])
    got = Steps(ids=np.array([[2, 2]]), logits=[a, a], lengths=[2])
    run = compare_steps(ref, got, ["p"], "one by one", 1e-4, 1e-3)
    d = run.prompts[0].divergence
    assert not run.ok and d is not None and (d.step, d.expected, d.got, d.got_text) == (2, 2, -1, "<end>")


def test_references_decoded_beforehand_give_the_same_verdict_tokens_and_logits(llama):
    """transformers' decodes done first (as the pipeline runs them beside the export) and handed in: the check's
    runs are those of decoding them inside it; a partial set is completed."""
    from studio.generate.verify import BATCHED, ONE_BY_ONE, reference_decodes

    model, files = llama
    tok = tiny_lm.tokenizer()
    prompts = tiny_lm.PROMPTS[:3]
    inside, _ = check_generation(model, tok, files, prompts, NEW, probes=False)
    done = reference_decodes(model, tok, prompts, NEW, {})
    assert len(done[ONE_BY_ONE]) == 3 and len(done[BATCHED]) == 1
    partial = {ONE_BY_ONE: done[ONE_BY_ONE][:1]}  # a thread that stopped after one prompt
    for refs in (done, partial):
        given, _ = check_generation(model, tok, files, prompts, NEW, probes=False, references=refs)
        assert [r.ok for r in given] == [r.ok for r in inside] and len(given) == 2
        for a, b in zip(inside, given):
            for p, q in zip(a.prompts, b.prompts):
                assert (p.reference_ids, p.onnx_ids, p.max_logits_diff) == (
                    q.reference_ids,
                    q.onnx_ids,
                    q.max_logits_diff,
                )
