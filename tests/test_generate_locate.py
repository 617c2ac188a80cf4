"""The divergence locator on a generation step (studio.generate.locate_step, issue 27 §3): a decoder whose
model.onnx is corrupted after the export (one MatMul weight of layer 1 scaled) really diverges from transformers'
greedy `generate`; the report fails generation, names the prompt, step and tokens, and its `divergence` names the
corrupted node as the first where ONNX Runtime leaves PyTorch on that step. The references are transformers' own
(`generate`, the model's forward) and the node written into the file, never the studio's wrapper."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny_lm
import torch
from onnx import numpy_helper

import studio
from studio.generate import locate_step
from studio.generate import run as run_mod
from studio.report.divergence import Divergence, format_lines
from studio.report.model import GenerationRun, PromptResult, TokenDiff
from studio.spec import ConvertSpec

NEW = 8
CORRUPT = "/model/model/layers.1/mlp/down_proj/MatMul"  # Llama's last MLP projection, TorchScript's scope name
SCALE = 1.5


def corrupt(path, node_name: str = CORRUPT, scale: float = SCALE) -> int:
    """Scale the weight initializer of `node_name` in the file; returns the node's index in the graph."""
    model = onnx.load(str(path))
    names = [n.name for n in model.graph.node]
    node = model.graph.node[names.index(node_name)]
    inits = {t.name: t for t in model.graph.initializer}
    weight = next(i for i in node.input if i in inits)
    arr = numpy_helper.to_array(inits[weight]) * np.float32(scale)
    inits[weight].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), weight))
    onnx.save(model, str(path))
    return names.index(node_name)


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory):
    """studio.convert on a tiny Llama folder whose model.onnx is corrupted between the export and the checks."""
    root = tmp_path_factory.mktemp("gen-locate")
    folder = root / "llama"
    model = tiny_lm.model("llama")
    model.save_pretrained(str(folder))
    tiny_lm.tokenizer().save_pretrained(str(folder))
    csv = root / "prompts.csv"
    csv.write_text("id,prompt\n" + "".join(f"{i},{p}\n" for i, p in enumerate(tiny_lm.PROMPTS)))
    original = run_mod.export_files
    where: dict[str, int] = {}

    def export_then_corrupt(task, loaded, spec, work, **kw):
        files, info = original(task, loaded, spec, work, **kw)
        where["position"] = corrupt(work / files.files["model"])
        return files, info

    mp = pytest.MonkeyPatch()
    mp.setattr(run_mod, "export_files", export_then_corrupt)
    try:
        out = root / "out"
        spec = ConvertSpec(str(folder), str(csv), out=str(out), max_new_tokens=NEW, latency_budget_s=0.02, cuda=False)
        report = studio.convert(spec)
    finally:
        mp.undo()
    return report, out, where["position"], model


def test_a_real_divergence_fails_and_is_located_at_the_corrupted_node(corrupted):
    report, out, position, _ = corrupted
    gen = report.generation
    assert gen is not None and not gen.ok and not report.ok
    one = next(r for r in gen.runs if r.mode == "one by one")
    real = [p for p in one.prompts if p.divergence is not None and not p.divergence.near_tie]
    assert real and not one.ok, "the corrupted weight must change some prompt's tokens"
    first = real[0].divergence
    assert first.expected != first.got and first.margin is not None and first.margin > 0
    div = report.divergence
    assert div is not None and div["found"] and div["trigger"] == "generation"
    step = div["generation_step"]
    assert step["run"] == "one by one" and step["prompt"] == first.prompt and step["step"] == first.step
    assert (step["expected"], step["got"], step["near_tie"]) == (first.expected, first.got, False)
    assert math.isclose(step["margin"], first.margin)
    # the first node where ONNX Runtime leaves PyTorch exists in model.onnx, at the corrupted one (nothing before
    # it can differ: the same weights), and its module is the corrupted Linear
    graph = [n.name for n in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node]
    node = div["first"]["node"]
    assert node in graph and graph.index(node) >= position
    assert node == CORRUPT and div["first"]["module"] == "model.layers.1.mlp.down_proj"
    assert div["first"]["position"] == position and not div["first"]["ok"] and div["first"]["max_abs_diff"] > 0.1
    assert all(s["ok"] and s["position"] < position for s in div["agreeing"]) and div["agreeing"]
    assert div["per_node"][CORRUPT]["ok"] is False
    assert all(e["ok"] for e in div["per_node"].values() if e["position"] < position)
    words = f"prompt {first.prompt}, step {first.step}"
    assert words in div["message"] and CORRUPT in div["message"]
    # report.json holds the same, report.md and the CLI's lines say it
    saved = json.loads((out / "report.json").read_text())["divergence"]
    assert saved["first"]["node"] == CORRUPT and saved["generation_step"]["step"] == first.step
    md = (out / "report.md").read_text()
    assert "## Divergence" in md and words in md and CORRUPT in md
    lines = format_lines(Divergence.from_dict(saved))
    assert lines[0].startswith("divergence  FOUND") and words in lines[0]
    assert any("FIRST" in line and CORRUPT in line for line in lines)
    from studio.cli.text import summary

    printed = summary(report)
    assert "divergence  FOUND" in printed and words in printed and CORRUPT in printed
    # the page's graph view paints model.onnx from report.json's per_node, the corrupted node as the first
    from studio.app.graph_overlay import divergence_overlay

    overlay = divergence_overlay({"divergence": saved}, "model.onnx")
    assert overlay is not None and overlay.first == CORRUPT and overlay.nodes == len(saved["per_node"])
    assert CORRUPT in json.loads(overlay.doc)["model.onnx"]["results"]
    assert "locate" in report.timings["stages"]


def test_the_located_step_is_the_diverging_step(corrupted):
    """On the feeds the locator ran (the prompt and transformers' tokens before the step, past 0), the corrupted
    file's last position picks the ONNX token and transformers' forward the reference's one."""
    report, out, _, model = corrupted
    step = report.divergence["generation_step"]
    one = next(r for r in report.generation.runs if r.mode == "one by one")
    p = next(x for x in one.prompts if x.prompt == step["prompt"])
    tok = tiny_lm.tokenizer()
    ids = tok(tiny_lm.PROMPTS[p.prompt], return_tensors="np")["input_ids"].astype(np.int64)
    ids = np.concatenate([ids, np.asarray([p.reference_ids[: step["step"]]], np.int64)], 1)
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids)).logits[0, -1].numpy()
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            feeds[i.name] = np.zeros([1, i.shape[1], 0, i.shape[3]], np.float32)
    got = sess.run(["logits"], feeds)[0][0, -1]
    assert int(want.argmax()) == step["expected"] and int(got.argmax()) == step["got"]


def _run(mode: str, *diffs: TokenDiff | None) -> GenerationRun:
    prompts = [
        PromptResult(prompt=i, text="t", reference_ids=[5, 6, 7], onnx_ids=[5, 6, 7], same=d is None, divergence=d)
        for i, d in enumerate(diffs)
    ]
    return GenerationRun(mode, ok=all(d is None or d.near_tie for d in diffs), prompts=prompts)


def test_which_step_is_located():
    tie = TokenDiff(prompt=0, step=1, expected=6, got=9, margin=1e-6, near_tie=True)
    real = TokenDiff(prompt=1, step=2, expected=7, got=8, margin=2.0)
    batched_only = TokenDiff(prompt=0, step=0, expected=5, got=4, margin=3.0)
    # a near tie alone is not located unless asked; asked, it is
    assert locate_step.pick_step([_run("one by one", tie, None)], requested=False) is None
    assert locate_step.pick_step([_run("one by one", tie, None)], requested=True)[2] is tie
    # a real divergence wins over a near tie, the one-by-one run over the batched one
    runs = [_run("batched", batched_only, None), _run("one by one", tie, real)]
    mode, prompt, diff = locate_step.pick_step(runs, requested=False)
    assert (mode, prompt.prompt, diff) == ("one by one", 1, real)
    assert locate_step.pick_step([_run("batched", batched_only)], requested=False)[0] == "batched"
    # asked with every token the same: prompt 0 (its last step)
    mode, prompt, diff = locate_step.pick_step([_run("one by one", None, None)], requested=True)
    assert (prompt.prompt, diff) == (0, None)
    assert locate_step.pick_step([_run("one by one", None)], requested=False) is None


def test_an_encoder_decoder_says_the_locator_covers_decoders_only():
    real = TokenDiff(prompt=0, step=2, expected=7, got=8, margin=float("nan"))
    spec = SimpleNamespace(atol=1e-4, rtol=1e-3, threads=None, locate=False)
    files = SimpleNamespace(task="text2text-generation")
    div = locate_step.for_generation(spec, None, files, None, [_run("one by one", real)], ["t"], 0)
    assert div is not None and not div["found"] and div["first"] is None
    assert "decoders (model.onnx) only" in div["message"] and "prompt 0, step 2" in div["message"]
    assert div["generation_step"]["margin"] == "nan"  # a NaN margin stays NaN, written as report.json writes NaN
    json.dumps(div, allow_nan=False)


def test_requested_on_a_clean_decoder_finds_no_divergence(tmp_path):
    """--locate with every token the same: the locator runs on prompt 0's last step and every module agrees."""
    from studio.generate.decoder import export_decoder
    from studio.generate.ort_decoder import OrtDecoder
    from studio.generate.verify import check_generation
    from studio.sources.base import LoadedModel

    model, tok = tiny_lm.model("gpt2"), tiny_lm.tokenizer()
    files = export_decoder(model, model.config, tmp_path, opset=18)
    runs, _ = check_generation(model, tok, files, tiny_lm.PROMPTS[:1], max_new_tokens=4, probes=False)
    assert all(r.ok for r in runs)
    loaded = LoadedModel("hf", "tiny", model, adapter=None, inputs=[], output_names=[], tokenizer=tok)  # type: ignore[arg-type]
    spec = SimpleNamespace(atol=1e-4, rtol=1e-3, threads=1, locate=True)
    generator = OrtDecoder(files, eos_token_id=tiny_lm.EOS, pad_token_id=tiny_lm.EOS)
    div = locate_step.for_generation(spec, loaded, files, generator, runs, tiny_lm.PROMPTS[:1], tiny_lm.EOS)
    assert div is not None and div["trigger"] == "requested" and not div["found"] and div["stopped"] is None
    last = len(runs[0].prompts[0].reference_ids) - 1
    assert div["generation_step"]["step"] == last and div["generation_step"]["prompt"] == 0
    assert div["compared"] == div["candidates"] > 10 and div["outputs_max_abs_diff"] < 1e-3
    assert "every module output compared agrees" in div["message"]
