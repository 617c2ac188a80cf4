"""studio.generate.speed and studio.generate.variants on a tiny GPT-2 (transformers' own model code, random
weights sharpened by tests/tiny_lm.py) exported with its cache:

- the speed rows are measured: positive times and rates for PyTorch and ONNX Runtime at batch 1 and at the
  sample's batch, the same new-token count on both sides, providers as they really ran, and a CUDA row that holds
  a reason, never a number, when CUDA is missing, turned off, or a session only claims it;
- the IO-binding loop (run here on a CPU session) decodes the tokens transformers' `generate` decodes;
- int8 / fp16 variants carry an identical share in [0, 1] judged against transformers, and a variant built to
  diverge (its logits pushed towards one token) reports its first divergence and fails.
Speed targets (ORT >= 1.5x PyTorch tokens/s) are benchmarks, not tests: nothing here compares the figures.
"""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import onnx
import pytest
import tiny_lm
import torch
from onnx import helper, numpy_helper

from studio.checks import runtime
from studio.generate import speed
from studio.generate import variants as gv
from studio.generate.base import Steps
from studio.generate.decoder import export_decoder
from studio.generate.ort_decoder import OrtDecoder
from studio.variants.table import VARIANT_TABLE

NEW = 6
THREADS = 2


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    module = tiny_lm.model("gpt2").eval()
    tok = tiny_lm.tokenizer()
    folder = tmp_path_factory.mktemp("gpt2")
    files = export_decoder(module, module.config, folder)
    module.eval()  # whatever mode the export left it in: transformers' reference decodes without dropout
    prompts = tiny_lm.PROMPTS[:3]
    tok.padding_side = "left"
    tok.pad_token = tok.eos_token
    enc = tok(prompts, padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    return types.SimpleNamespace(module=module, files=files, ids=ids, mask=mask, eos=tiny_lm.EOS)


def _generator(lm, files=None):
    return OrtDecoder(files or lm.files, eos_token_id=None, pad_token_id=lm.eos, threads=THREADS)


def _transformers(lm, ids, mask, n):
    """transformers' own greedy generate of exactly n new tokens, EOS not treated as the end (as BoundDecoder,
    which decodes a fixed count): the independent reference."""
    from transformers import GenerationConfig

    plain = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=n, eos_token_id=None, pad_token_id=lm.eos)
    with torch.no_grad():
        out = lm.module.generate(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), generation_config=plain
        )
    return out[:, ids.shape[1] :].numpy()


def test_speed_rows_are_measured_and_honest(lm):
    rows = speed.measure_speed(lm.module, _generator(lm), lm.ids, lm.mask, NEW, threads=THREADS, budget_s=0.2)
    cpu = [r for r in rows if r.provider != runtime.CUDA]
    assert [(r.engine, r.provider, r.batch) for r in cpu] == [
        ("torch", "torch-cpu", 1),
        ("onnxruntime", "CPUExecutionProvider", 1),
        ("torch", "torch-cpu", 3),
        ("onnxruntime", "CPUExecutionProvider", 3),
    ]
    for r in cpu:
        assert r.error is None, r
        assert r.ttft_ms is not None and r.ttft_ms > 0 and r.tokens_per_s is not None and r.tokens_per_s > 0, r
        assert r.new_tokens == NEW and r.threads == THREADS and r.iterations and r.iterations >= 3, r
        whole_ms = 1000.0 * r.batch * r.new_tokens / r.tokens_per_s
        assert r.ttft_ms < 1.5 * whole_ms, r  # the first token is part of each decode (medians of other calls)
    assert cpu[0].sequence == int(lm.mask[0].sum()) and cpu[2].sequence == lm.ids.shape[1]  # b1: padding dropped
    assert "attention" in (cpu[0].note or "")  # how PyTorch ran is said
    gpu = [r for r in rows if r.provider == runtime.CUDA]
    assert [r.batch for r in gpu] == [1, 3]
    for r in gpu:
        if runtime.cuda_session(lm.files.folder / "model.onnx").session is None:  # no GPU here: a reason only
            assert r.tokens_per_s is None and r.ttft_ms is None and not r.io_binding and r.error, r
        else:
            assert r.io_binding and r.tokens_per_s and r.tokens_per_s > 0, r


def test_a_missing_or_pretended_cuda_gives_a_reason_not_a_number(lm, monkeypatch):
    cases = {
        "missing": runtime.CudaSession(None, "forced: no CUDA device"),
        # a session that claims nothing but runs on the CPU: cuda_decoder checks get_providers() itself
        "pretended": runtime.CudaSession(runtime.cpu_session(lm.files.folder / "model.onnx", 1), None),
    }
    for case, made in cases.items():
        monkeypatch.setattr(runtime, "cuda_session", lambda path, threads=None, made=made: made)
        bound, why = speed.cuda_decoder(lm.files, THREADS)
        assert bound is None and why, case
        assert ("forced: no CUDA device" if case == "missing" else "CPUExecutionProvider, not CUDA") in why, why
        [row] = speed._cuda_rows(bound, why, [(lm.ids, lm.mask)], [NEW], 0.1)
        assert row.provider == runtime.CUDA and row.tokens_per_s is None and row.ttft_ms is None and row.error == why
    one = lm.ids[:1], lm.mask[:1]
    off = speed.measure_speed(lm.module, _generator(lm), *one, 2, threads=1, budget_s=0.05, cuda=False)
    assert [r.error for r in off if r.provider == runtime.CUDA] == [speed.NO_CUDA]
    assert len(off) == 3  # one prompt: batch 1 only (PyTorch, ORT CPU) and its CUDA row


def test_both_engines_decode_the_same_count_when_onnx_stops_at_eos(lm):
    class StopsEarly:
        """The real generator, ending after 2 steps as an EOS on every prompt would end it, and not timing its
        first token (so a one-token decode is timed for it instead)."""

        def __init__(self, inner):
            self.inner, self.files = inner, inner.files

        def providers(self):
            return self.inner.providers()

        def greedy(self, ids, mask, n):
            return dataclasses.replace(self.inner.greedy(ids, mask, min(n, 2)), seconds_first=None)

    rows = speed.measure_speed(lm.module, StopsEarly(_generator(lm)), lm.ids[:1], lm.mask[:1], NEW, budget_s=0.05)
    assert [r.new_tokens for r in rows] == [2, 2, 2]
    assert all(r.ttft_ms and r.ttft_ms > 0 for r in rows[:2]), rows
    assert all("after 2 new tokens" in (r.note or "") for r in rows[:2])


def test_the_io_binding_loop_decodes_what_transformers_decodes(lm):
    bound = speed.BoundDecoder(runtime.cpu_session(lm.files.folder / "model.onnx", THREADS), lm.files, device="cpu")
    got = bound.greedy(lm.ids, lm.mask, NEW)
    assert np.array_equal(got, _transformers(lm, lm.ids, lm.mask, NEW))


def _reference(lm) -> Steps:
    from studio.generate.reference import reference_steps

    return reference_steps(lm.module, lm.ids, lm.mask, NEW, lm.eos, lm.eos)


def test_int8_and_fp16_are_judged_by_generating(lm):
    spec = types.SimpleNamespace(variants=("int8", "fp16"), threads=THREADS, cuda=False, atol=1e-4, rtol=1e-3)
    made = gv.judge_variants(spec, None, lm.files, lm.ids, lm.mask, _reference(lm), lambda f: _generator(lm, f))
    assert [r["name"] for r in made.rows] == ["int8", "fp16"] and [i.name for i in made.infos] == ["int8", "fp16"]
    for row, info in zip(made.rows, made.infos, strict=True):
        assert row["error"] is None or not row["ok"], row
        assert 0.0 <= row["identical_share"] <= 1.0, row
        assert row["ok"] == (row["identical_share"] >= gv.MIN_SHARE[row["name"]]) == info.ok
        assert (lm.files.folder / row["file"]).is_file() and info.size_bytes and info.files == [row["file"]]
        assert row["provider"] == "CPUExecutionProvider"
        first = row["first_divergence"]
        assert (first is None) == (row["identical_share"] == 1.0)
    assert made.infos[0].method.startswith("int8") and "fp16" in made.infos[1].notes


def _pushed_to(token: int):
    """A 'variant' builder whose file adds +1e4 to one token's logit: it decodes that token at every step."""

    def build(ctx, src, dest):
        model = onnx.load(str(src))
        graph = model.graph
        producer = next(n for n in graph.node if "logits" in n.output)
        producer.output[list(producer.output).index("logits")] = "logits_raw"
        vocab = graph.output[0].type.tensor_type.shape.dim[2].dim_value
        bias = np.zeros(vocab, np.float32)
        bias[token] = 1e4
        graph.initializer.append(numpy_helper.from_array(bias, "push_bias"))
        graph.node.append(helper.make_node("Add", ["logits_raw", "push_bias"], ["logits"]))
        onnx.save(model, str(dest))
        return gv.Built(dest, "pushed towards one token (test)", src, ["built to diverge"])

    return build


def test_a_variant_built_to_diverge_reports_its_first_divergence(lm, monkeypatch):
    reference = _reference(lm)
    token = next(t for t in range(5, 40) if t not in reference.ids[:, 0])  # not what transformers decodes first
    monkeypatch.setitem(VARIANT_TABLE, "int8", dataclasses.replace(VARIANT_TABLE["int8"], build=_pushed_to(token)))
    spec = types.SimpleNamespace(variants=("int8",), threads=THREADS, cuda=False, atol=1e-4, rtol=1e-3)
    made = gv.judge_variants(spec, None, lm.files, lm.ids, lm.mask, reference, lambda f: _generator(lm, f))
    [row] = made.rows
    assert row["ok"] is False and made.infos[0].ok is False
    first = row["first_divergence"]
    assert first["step"] == 0 and first["prompt"] == 0 and first["got"] == token
    assert first["expected"] == int(reference.ids[0, 0]) and first["margin"] > 0
    assert [d["prompt"] for d in row["divergences"]] == [0, 1, 2]
    assert row["identical_share"] < gv.MIN_SHARE["int8"]
    assert "first divergence at prompt 0, step 0" in row["error"]


def test_a_variant_that_cannot_be_built_says_why(lm, monkeypatch):
    def broken(ctx, src, dest):
        raise RuntimeError("quantizer exploded")

    monkeypatch.setitem(VARIANT_TABLE, "fp16", dataclasses.replace(VARIANT_TABLE["fp16"], build=broken))
    spec = types.SimpleNamespace(variants=("fp16",), threads=1, cuda=False, atol=1e-4, rtol=1e-3)
    made = gv.judge_variants(spec, None, lm.files, lm.ids, lm.mask, _reference(lm), lambda f: _generator(lm, f))
    [row] = made.rows
    assert row["ok"] is False and row["identical_share"] is None and "quantizer exploded" in row["error"]
    assert not (lm.files.folder / "variants" / "model.fp16.onnx").exists()


def test_a_busy_machine_is_said_beside_the_figures():
    calm, busy = {"logical_cpus": 2, "load_avg": 0.4}, {"logical_cpus": 2, "load_avg": 7.5}
    assert speed.busy_note(calm, calm) is None
    assert speed.busy_note(calm, busy) == "the machine was busy: load average 7.5 on 2 logical CPUs"


def test_the_cuda_rows_timing_path_fills_both_figures(lm):
    """The path a real CUDA session takes (no GPU here: the same loop bound on the CPU, only to see the figures
    filled; measure_speed itself never hands _cuda_rows a session that does not run on CUDA)."""
    bound = speed.BoundDecoder(runtime.cpu_session(lm.files.folder / "model.onnx", 1), lm.files, device="cpu")
    [row] = speed._cuda_rows(bound, None, [(lm.ids, lm.mask)], [NEW], 0.05)
    assert row.error is None and row.io_binding and row.batch == 3 and row.new_tokens == NEW
    assert row.ttft_ms and row.ttft_ms > 0 and row.tokens_per_s and row.tokens_per_s > 0 and row.iterations >= 3
    assert len(bound.firsts) >= row.iterations  # one first-token time per decode


def test_the_cpu_rows_are_the_generation_checks_own_timed_decodes(lm):
    """No decode of their own: each figure is the median of the check's decodes (one per prompt at batch 1, the
    batched one at the sample's batch), both engines timed the same way, and the rows say so."""
    from studio.generate.verify import check_generation

    tok = tiny_lm.tokenizer()
    prompts = tiny_lm.PROMPTS[:3]
    timings: list = []
    gen = _generator(lm)
    calls = []
    inner = gen.greedy
    gen.greedy = lambda *a: calls.append(a[0].shape) or inner(*a)
    runs, _ = check_generation(lm.module, tok, lm.files, prompts, NEW, ort_generator=gen, probes=False, timings=timings)
    assert len(calls) == len(prompts) + 1 and [t.mode for t in timings] == ["one by one"] * 3 + ["batched"]
    for t in timings:  # both engines' own clocks: the first token inside the whole decode
        assert 0 < t.reference_first <= t.reference_total and 0 < t.onnx_first <= t.onnx_total, t
        assert t.reference_tokens == t.onnx_tokens == NEW or not all(r.ok for r in runs)
    rows = speed.speed_from_check(timings, gen.providers(), THREADS, "eager attention")
    assert len(calls) == len(prompts) + 1  # building the rows decoded nothing
    assert [(r.engine, r.batch, r.iterations) for r in rows] == [
        ("torch", 1, 3), ("onnxruntime", 1, 3), ("torch", 3, 1), ("onnxruntime", 3, 1)
    ]  # fmt: skip
    ones = [t for t in timings if t.mode == "one by one"]
    want = float(np.median([NEW / t.onnx_total for t in ones]))
    assert rows[1].tokens_per_s == pytest.approx(want, rel=1e-3)  # the median of the one-by-one decodes
    assert rows[0].ttft_ms == pytest.approx(1000 * float(np.median([t.reference_first for t in ones])), rel=1e-3)
    batched = timings[-1]
    assert rows[3].tokens_per_s == pytest.approx(3 * NEW / batched.onnx_total, rel=1e-3)
    assert rows[2].sequence == lm.ids.shape[1] and rows[1].provider == "CPUExecutionProvider"
    for r in rows:
        assert r.error is None and r.threads == THREADS and speed.CHECK_NOTE in (r.note or ""), r
    assert "eager attention" in rows[0].note and "median of 3 prompts" in rows[0].note
    cuda = speed.cuda_speed(lm.files, timings, lm.ids, lm.mask, threads=THREADS, cuda=False)
    assert [(r.batch, r.error) for r in cuda] == [(1, speed.NO_CUDA), (3, speed.NO_CUDA)]
