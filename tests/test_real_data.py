"""Real data in the layouts people's tools write: scikit-learn's bundled breast-cancer table (30 numeric
columns) feeding an MLP that takes `features [batch, 30]`, written by pandas to_csv, as an Excel-style CSV
(BOM, `;`), as JSON in every pandas orient and as JSON Lines; and a support-ticket CSV with an empty
comment. References come from PyTorch and pandas, not from the studio."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import tiny
import torch
from conftest import REPO

from studio import ConvertSpec, convert, sources
from studio.errors import BatchError
from studio.sources.base import LoadDefaults

sklearn_datasets = pytest.importorskip("sklearn.datasets")

ROWS = 12


class CancerMLP(torch.nn.Module):
    """Standardises the raw measurements itself, so the sample's columns feed it as written."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.net = torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.mean) / self.std)


@pytest.fixture(scope="module")
def cancer(tmp_path_factory):
    data = sklearn_datasets.load_breast_cancer(as_frame=True)
    x = torch.tensor(data.data.to_numpy(), dtype=torch.float32)
    y = torch.tensor(data.target.to_numpy(), dtype=torch.long)
    torch.manual_seed(0)
    model = CancerMLP(x.mean(0), x.std(0))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):  # a few hundred milliseconds: enough to be a real classifier
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    assert accuracy > 0.9
    root = tmp_path_factory.mktemp("cancer")
    torch.jit.script(model).save(str(root / "mlp.pt"))
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(model, (x[:4],), dynamic_shapes={"features": {0: batch}})
    torch.export.save(ep, str(root / "mlp.pt2"))
    # the sample as people keep it: an id, the 30 measurements, the label; pandas writes its index too
    frame = data.data.iloc[:ROWS].copy()
    frame.insert(0, "id", [f"P{842300 + i}" for i in range(ROWS)])
    frame["label"] = [data.target_names[t] for t in data.target.iloc[:ROWS]]
    frame.to_csv(root / "cancer.csv")
    return {
        "root": root,
        "model": model,
        "frame": frame,
        "features": [str(f) for f in data.feature_names],
        "x": x[:ROWS].numpy(),
    }


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "studio", *map(str, args)], capture_output=True, text=True, cwd=cwd or REPO, timeout=600
    )


def torch_reference(cancer, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return cancer["model"](torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def test_torchscript_mlp_from_30_columns_via_cli(cancer, tmp_path):
    out = tmp_path / "out"
    run = run_cli(
        "convert",
        cancer["root"] / "mlp.pt",
        "--trust-code",
        "--data",
        cancer["root"] / "cancer.csv",
        "--exporter",
        "torchscript",
        "--latency-budget",
        "0.02",
        "--no-cuda",
        "--out",
        out,
        "--quiet",
    )
    assert run.returncode == 0, run.stderr
    report = json.loads((out / "report.json").read_text())
    assert "feeds    features = mean radius[0], mean texture[1]," in run.stdout
    assert "worst fractal dimension[29]" in run.stdout
    feats = cancer["features"]
    assert report["roles"]["id"] == report["roles"]["label"] == report["roles"]["Unnamed: 0"] == "ignore"
    assert all(report["roles"][f] == "tabular" for f in feats)
    # the report says which column is which feature index
    assert [(f["column"], f["start"], f["width"]) for f in report["feeds"]["features"]] == [
        (c, i, 1) for i, c in enumerate(feats)
    ]
    md = (out / "report.md").read_text()
    assert "| features | 0 | mean radius |" in md and "| features | 29 | worst fractal dimension |" in md
    # the graph metadata records the same, for use without the studio
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert json.loads(meta["studio.inputs"])["features"]["columns"] == feats
    # ONNX output on the CSV's rows (read by pandas) matches PyTorch on the same numbers
    rows = pd.read_csv(cancer["root"] / "cancer.csv")[feats].to_numpy(dtype=np.float32)
    np.testing.assert_array_equal(rows, cancer["x"])
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: rows})[0]
    np.testing.assert_allclose(got, torch_reference(cancer, rows), atol=1e-4, rtol=1e-3)
    assert report["parity"]["ok"] and report["ok"]
    # the generated example rebuilds the same inputs from the sample
    ex = subprocess.run(
        [sys.executable, str(out / "inference_example.py")], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert ex.returncode == 0, ex.stderr
    assert "inputs match sample_inputs.npz: True" in ex.stdout


def test_pt2_mlp_declares_its_width_and_converts(cancer, tmp_path):
    path = cancer["root"] / "mlp.pt2"
    loaded = sources.load(path, LoadDefaults(trust_code=True))
    assert [(i.name, i.kind, i.width) for i in loaded.inputs] == [("features", "tabular", 30)]
    report = convert(
        ConvertSpec(
            str(path),
            str(cancer["root"] / "cancer.csv"),
            out=str(tmp_path / "out"),
            exporter="dynamo",
            trust_code=True,
            latency_budget_s=0.02,
            cuda=False,
        )
    )
    assert report.ok, report.failed_checks
    assert [f["column"] for f in report.feeds["features"]] == cancer["features"]
    inputs = np.load(tmp_path / "out" / "sample_inputs.npz")
    np.testing.assert_array_equal(inputs["features"], cancer["x"])
    # one measurement short: the width the program declares and the columns found are named
    short = cancer["frame"].drop(columns=["worst symmetry"])
    short.to_csv(tmp_path / "short.csv")
    with pytest.raises(BatchError) as e:
        convert(ConvertSpec(str(path), str(tmp_path / "short.csv"), out=str(tmp_path / "o2"), trust_code=True))
    msg = str(e.value)
    assert "expects width 30" in msg and "29 features" in msg and "'mean radius'" in msg
    assert not (tmp_path / "o2").exists()


def write_layouts(frame: pd.DataFrame, folder) -> dict[str, tuple]:
    """The sample written the ways tools write it -> (path, extra ConvertSpec options)."""
    out = {}
    p = folder / "pandas.csv"
    frame.to_csv(p)
    out["pandas to_csv"] = (p, {})
    p = folder / "excel.csv"
    frame.to_csv(p, sep=";", encoding="utf-8-sig", index=False)
    assert p.read_bytes().startswith(b"\xef\xbb\xbfid;mean radius;")
    out["excel ; with BOM"] = (p, {})
    for orient in ("records", "split", "index", "columns", "values", "table"):
        p = folder / f"{orient}.json"
        frame.to_json(p, orient=orient)
        # orient="values" has no names: columns are 0, 1, ...; the id is 0 and the label 31
        out[f"json {orient}"] = (p, {"tabular": {"features": ("1..30",)}} if orient == "values" else {})
    p = folder / "lines.jsonl"
    frame.to_json(p, orient="records", lines=True)
    out["json lines"] = (p, {})
    return out


def test_every_layout_converts_to_the_same_inputs(cancer, tmp_path):
    layouts = write_layouts(cancer["frame"].reset_index(drop=True), tmp_path)
    mlp = cancer["root"] / "mlp.pt"
    for what, (path, extra) in layouts.items():
        out = tmp_path / f"out-{path.stem}"
        report = convert(
            ConvertSpec(
                str(mlp),
                str(path),
                out=str(out),
                exporter="torchscript",
                trust_code=True,
                latency_budget_s=0.01,
                cuda=False,
                variants=(),
                **extra,
            )
        )
        assert report.ok, (what, report.failed_checks)
        fed = np.load(out / "sample_inputs.npz")["features"]
        np.testing.assert_array_equal(fed, cancer["x"], err_msg=what)
        names = [f["column"] for f in report.feeds["features"]]
        assert names == ([str(i) for i in range(1, 31)] if "values" in what else cancer["features"]), what
        ex = subprocess.run(
            [sys.executable, str(out / "inference_example.py")],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=300,
        )
        assert "inputs match sample_inputs.npz: True" in ex.stdout, (what, ex.stdout, ex.stderr)


TICKETS = """ticket_id,channel,comment,label
T-1001,phone,the product arrived late and the box was damaged,complaint
T-1002,chat,,other
T-1003,email,great quality and fast i would buy again,praise
T-1004,chat,it never works and i want a refund,complaint
"""


def test_ticket_csv_with_an_empty_comment_converts_and_warns(tmp_path):
    folder = tiny.make_hf_folder(tmp_path / "bert", "bert")
    sample = tmp_path / "tickets.csv"
    sample.write_text(TICKETS)
    report = convert(
        ConvertSpec(
            str(folder),
            str(sample),
            out=str(tmp_path / "out"),
            exporter="torchscript",
            latency_budget_s=0.02,
            cuda=False,
        )
    )
    assert report.ok, report.failed_checks
    assert report.roles == {"ticket_id": "ignore", "channel": "ignore", "comment": "text", "label": "ignore"}
    assert any(
        "'comment'" in w and "row 2 (1-based, header not counted)" in w and "empty" in w for w in report.warnings
    ), report.warnings
    assert "## Warnings" in (tmp_path / "out" / "report.md").read_text()
    # the empty comment was fed as empty text: [CLS] [SEP] and padding
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = np.load(tmp_path / "out" / "sample_inputs.npz")["input_ids"]
    row = ids[1].tolist()
    assert row[:2] == [tok.cls_token_id, tok.sep_token_id] and set(row[2:]) <= {tok.pad_token_id}


CHANNELS = ["phone", "chat", "email"]


def test_categorical_field_with_a_vocabulary_is_one_hot_encoded_and_recorded(tmp_path):
    from test_multimodal import tiny_config, tiny_tokenizer

    from studio.models.multimodal import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model(
        tiny_config(
            text_field="comment",
            tab_fields={"channel": 3},
            tab_vocab={"channel": CHANNELS},
            labels=["complaint", "other", "praise"],
        )
    )
    ckpt = save_checkpoint(model, tiny_tokenizer(), tmp_path / "tickets.pt")
    sample = tmp_path / "tickets.csv"
    sample.write_text(TICKETS)
    out = tmp_path / "out"
    report = convert(
        ConvertSpec(str(ckpt), str(sample), out=str(out), exporter="torchscript", latency_budget_s=0.02, cuda=False)
    )
    assert report.ok, report.failed_checks
    assert report.roles["channel"] == "tabular"
    assert report.feeds["channel"] == [
        {"column": "channel", "start": 0, "width": 3, "encoding": "one-hot", "vocab": CHANNELS}
    ]
    fed = np.load(out / "sample_inputs.npz")["channel"]
    expected = np.eye(3, dtype=np.float32)[[CHANNELS.index(c) for c in pd.read_csv(sample)["channel"]]]
    np.testing.assert_array_equal(fed, expected)
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert json.loads(meta["studio.inputs"])["channel"]["features"][0]["vocab"] == CHANNELS
    ex = subprocess.run(
        [sys.executable, str(out / "inference_example.py")], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert "inputs match sample_inputs.npz: True" in ex.stdout, ex.stderr
    # a category the checkpoint does not know is named, with the ones it does
    sample.write_text(TICKETS.replace("T-1003,email", "T-1003,fax"))
    with pytest.raises(BatchError) as e:
        convert(ConvertSpec(str(ckpt), str(sample), out=str(tmp_path / "o2")))
    assert "'fax'" in str(e.value) and "'phone', 'chat', 'email'" in str(e.value) and e.value.row == 3


def test_categories_the_model_does_not_take_are_ignored_and_said(tmp_path):
    from studio.inputs.batch import build_batch
    from studio.inputs.sample import read_sample

    folder = tiny.make_hf_folder(tmp_path / "bert", "bert")
    sample = tmp_path / "tickets.csv"
    sample.write_text(TICKETS)
    loaded = sources.load(folder, ConvertSpec(str(folder), str(sample)))
    b = build_batch(read_sample(sample), loaded, {}, ConvertSpec(str(folder), str(sample)), file="tickets.csv")
    assert b.roles["channel"] == "ignore"
    said = [w for w in b.warnings if "'channel'" in w]
    assert len(said) == 1 and "takes no such field" in said[0] and "ignored" in said[0] and "'phone'" in said[0]
    # set by the user: no warning
    b2 = build_batch(read_sample(sample), loaded, {"channel": "ignore"}, ConvertSpec(str(folder), str(sample)))
    assert not [w for w in b2.warnings if "'channel'" in w]
