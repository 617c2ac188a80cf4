"""Code-carrying checkpoints (TorchScript, torch.export .pt2, pickled nn.Modules) behind the operator's
trust option, and operator plugins (--plugin / ONNX_STUDIO_PLUGINS / entry points)."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import pytest
import tiny
import torch
from torch import nn

from studio import sources
from studio.cli.commands import main as cli_main
from studio.errors import CheckpointError, UnsafeCheckpointError
from studio.pipeline import convert
from studio.sources import plugins
from studio.sources.base import LoadDefaults
from studio.spec import ConvertSpec


class TextTab(nn.Module):
    """Text + two tabular features -> class probabilities, written as a team would for TorchScript."""

    def __init__(self):
        super().__init__()
        import transformers

        self.encoder = transformers.AutoModel.from_config(tiny.make_config("bert"), attn_implementation="eager")
        self.fc = nn.Linear(32 + 2, 3)

    def forward(self, input_ids, attention_mask, price, quantity):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        return torch.softmax(self.fc(torch.cat([h, price, quantity], dim=-1)), dim=-1)


def text_tab() -> TextTab:
    torch.manual_seed(0)
    return TextTab().eval()


def example():
    ids = torch.randint(5, tiny.vocab_size(), (2, 7))
    return ids, torch.ones_like(ids), torch.randn(2, 1), torch.randn(2, 1)


def with_tokenizer(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tiny.bert_tokenizer(folder)  # writes vocab.txt
    tiny.bert_tokenizer(folder / "_v").save_pretrained(str(folder))
    return folder


def run(tmp: Path, ckpt, exporter="torchscript", **kw):
    sample = tiny.write_sample(tmp / "sample.csv")
    report = convert(
        ConvertSpec(
            checkpoint=str(ckpt),
            data=str(sample),
            out=str(tmp / "out"),
            exporter=exporter,
            latency_budget_s=0.02,
            cuda=False,
            **kw,
        )
    )
    assert report.checker.ok, report.checker.message
    assert report.parity.ok, [vars(o) for o in report.parity.outputs]
    assert report.dynamic.ok, [vars(p) for p in report.dynamic.probes]
    return report


def spec(path, **kw):
    return LoadDefaults(**kw)  # the loader options alone (a ConvertSpec is one too)


# ----------------------------------------------------------------------------------------- TorchScript


@pytest.fixture(scope="module")
def torchscript_folder(tmp_path_factory) -> Path:
    folder = with_tokenizer(tmp_path_factory.mktemp("ts"))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' masking code warns under tracing
        torch.jit.trace(text_tab(), example(), strict=False).save(str(folder / "model.pt"))
    return folder


def test_torchscript_is_refused_by_default_and_says_why(torchscript_folder):
    with pytest.raises(UnsafeCheckpointError, match="TorchScript archive: loading it runs") as e:
        sources.load(torchscript_folder, spec(torchscript_folder))
    assert "--trust-code" in str(e.value)


def test_torchscript_with_trust_maps_inputs_by_parameter_name_and_converts(tmp_path, torchscript_folder):
    loaded = sources.load(torchscript_folder, spec(torchscript_folder, trust_code=True))
    assert [(i.name, i.kind, i.column) for i in loaded.inputs] == [
        ("input_ids", "input_ids", None),
        ("attention_mask", "attention_mask", None),
        ("price", "tabular", None),
        ("quantity", "tabular", None),
    ]
    assert loaded.trusted_code and loaded.output_names == ["output"]
    args = example()
    with torch.no_grad():
        got = loaded.adapter(loaded.module, dict(zip(["input_ids", "attention_mask", "price", "quantity"], args)))[0]
        torch.testing.assert_close(got, text_tab()(*args))
    report = run(tmp_path, torchscript_folder, trust_code=True)
    assert report.roles["price"] == "tabular" and report.roles["quantity"] == "tabular"
    assert [i.name for i in report.graph.inputs] == ["input_ids", "attention_mask", "price", "quantity"]


def test_studio_json_declares_inputs_outputs_and_kinds(tmp_path):
    """Uninformative parameter names (x0, x1, ...): the person says what each one is in studio.json."""

    class Anon(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.EmbeddingBag(tiny.vocab_size(), 8, mode="mean")
            self.fc = nn.Linear(8 + 1, 3)

        def forward(self, x0, x1, x2):
            return self.fc(torch.cat([self.emb(x0, per_sample_weights=None) * x1[:, :1], x2], dim=-1))

    torch.manual_seed(0)
    folder = with_tokenizer(tmp_path / "anon")
    ids = torch.randint(5, 50, (2, 6))
    torch.jit.trace(Anon().eval(), (ids, torch.ones_like(ids), torch.randn(2, 1))).save(str(folder / "m.pt"))
    (folder / "studio.json").write_text(
        json.dumps(
            {
                "inputs": ["input_ids", "attention_mask", {"name": "price", "kind": "tabular", "column": "price"}],
                "outputs": ["logits"],
                "output_kinds": {"logits": "logits"},
            }
        )
    )
    loaded = sources.load(folder, spec(folder, trust_code=True))
    assert [(i.name, i.kind, i.column) for i in loaded.inputs] == [
        ("input_ids", "input_ids", None),
        ("attention_mask", "attention_mask", None),
        ("price", "tabular", "price"),
    ]
    assert loaded.output_names == ["logits"] and loaded.output_kinds == {"logits": "logits"}
    (folder / "studio.json").write_text(json.dumps({"inputs": ["input_ids", "tabular"]}))
    with pytest.raises(CheckpointError, match="declares 2 inputs but the program takes 3"):
        sources.load(folder, spec(folder, trust_code=True))


# ----------------------------------------------------------------------------------------- torch.export


class SmallTextTab(nn.Module):
    """Mean-pooled embeddings + two tabular features: exports in a second or two with the dynamo exporter."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(tiny.vocab_size(), 8)
        self.fc = nn.Linear(8 + 2, 3)

    def forward(self, input_ids, attention_mask, price, quantity):
        m = attention_mask.unsqueeze(-1).to(torch.float32)
        h = (self.emb(input_ids) * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.fc(torch.cat([h, price, quantity], dim=-1))


def test_pt2_program_refused_then_converted_with_trust(tmp_path):
    torch.manual_seed(0)
    model = SmallTextTab().eval()
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=64)
    ep = torch.export.export(
        model,
        example(),
        dynamic_shapes={
            "input_ids": {0: batch, 1: seq},
            "attention_mask": {0: batch, 1: seq},
            "price": {0: batch},
            "quantity": {0: batch},
        },
    )
    folder = with_tokenizer(tmp_path / "program")
    torch.export.save(ep, str(folder / "model.pt2"))
    with pytest.raises(UnsafeCheckpointError, match=r"torch\.export program \(\.pt2\)"):
        sources.load(folder / "model.pt2", spec(folder / "model.pt2"))
    report = run(tmp_path, folder, exporter="dynamo", trust_code=True)
    assert report.source["kind"] == "torch-export"
    assert report.export.exporter.startswith("dynamo")


# ----------------------------------------------------------------------------------------- pickled nn.Module

OPERATOR_MODELS = """
import torch
from torch import nn


class TabularNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, price, quantity):
        return {"logits": self.net(torch.cat([price, quantity], dim=-1))}
"""


def test_pickled_module_refused_then_converted_with_trust(tmp_path, monkeypatch):
    code = tmp_path / "code"
    code.mkdir()
    (code / "opsmodels.py").write_text(OPERATOR_MODELS)
    monkeypatch.syspath_prepend(str(code))
    import opsmodels

    torch.manual_seed(0)
    path = tmp_path / "whole" / "model.pt"
    path.parent.mkdir()
    torch.save(opsmodels.TabularNet().eval(), path)
    with pytest.raises(UnsafeCheckpointError, match=r"pickle of Python objects.*opsmodels\.TabularNet"):
        sources.load(path, spec(path))
    loaded = sources.load(path, spec(path, trust_code=True))
    assert loaded.kind == "pickled-module" and [i.name for i in loaded.inputs] == ["price", "quantity"]
    report = run(tmp_path, path, trust_code=True)
    assert [i.name for i in report.graph.inputs] == ["price", "quantity"]
    sys.modules.pop("opsmodels", None)


# ----------------------------------------------------------------------------------------- plugins

PLUGIN = '''
"""A team's own checkpoint format: {"acme": 1, "weights": {...}, "features": [...]} saved as .acme."""
from pathlib import Path

import torch
from torch import nn

from studio.sources.base import TABULAR, LoadedModel, ModelInput

NAME = "acme"
SEEN = []


class Scorer(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.lin = nn.Linear(n, 2)

    def forward(self, features):
        return torch.sigmoid(self.lin(features))


def looks_like(source):
    SEEN.append(type(source).__name__)
    if isinstance(source, Path):
        return source.suffix == ".acme"
    return isinstance(source, dict) and source.get("acme") == 1


def load(source, path, spec):
    obj = source if isinstance(source, dict) else torch.load(source, weights_only=True)
    n = len(obj["features"])
    model = Scorer(n)
    model.load_state_dict(obj["weights"])
    inputs = [ModelInput("features", TABULAR, column=None, width=None)]
    return LoadedModel(kind="acme", path=path, module=model.eval(),
                       adapter=lambda m, named: (m(named["features"]),),
                       inputs=inputs, output_names=["scores"], output_kinds={"scores": "probs"})
'''


@pytest.fixture
def plugin_file(tmp_path, monkeypatch):
    monkeypatch.delenv(plugins.ENV, raising=False)
    plugins.clear()
    path = tmp_path / "acme_plugin.py"
    path.write_text(PLUGIN)
    yield path
    plugins.clear()


def _acme_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    weights = {"lin.weight": torch.randn(2, 1), "lin.bias": torch.zeros(2)}
    torch.save({"acme": 1, "weights": weights, "features": ["price"]}, path)
    return path


def test_plugin_claims_by_path_and_by_weights_only_object(tmp_path, plugin_file):
    ckpt = _acme_checkpoint(tmp_path / "scorer.acme")
    with pytest.raises(CheckpointError):  # not registered: the built-in loaders do not know it
        sources.load(ckpt, spec(ckpt))
    (mod,) = plugins.use([str(plugin_file)])
    assert str(plugin_file) in os.environ[plugins.ENV]  # worker processes inherit it
    loaded = sources.load(ckpt, spec(ckpt))
    assert loaded.kind == "acme" and loaded.info["plugin"] == "acme"
    same = _acme_checkpoint(tmp_path / "scorer.pt")  # same content, ordinary name: claimed as an object
    assert sources.load(same, spec(same)).kind == "acme"
    assert "PosixPath" in mod.SEEN and "dict" in mod.SEEN


def test_plugin_from_environment_and_cli(tmp_path, plugin_file, monkeypatch, capsys):
    ckpt = _acme_checkpoint(tmp_path / "scorer.acme")
    sample = tmp_path / "rows.csv"
    sample.write_text("id,price\na,1.5\nb,2.0\nc,-3\n")
    monkeypatch.setenv(plugins.ENV, str(plugin_file))
    assert sources.load(ckpt, spec(ckpt)).kind == "acme"
    plugins.clear()
    monkeypatch.delenv(plugins.ENV)
    code = cli_main(
        [
            "convert",
            str(ckpt),
            "--data",
            str(sample),
            "--plugin",
            str(plugin_file),
            "--exporter",
            "torchscript",
            "--no-cuda",
            "--latency-budget",
            "0.02",
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["source"]["kind"] == "acme"


def test_broken_plugin_is_an_operator_error(tmp_path, plugin_file):
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("def looks_like(x):\n    return True\n")
    with pytest.raises(plugins.PluginError, match="does not define load"):
        plugins.use([str(bad)])
    assert cli_main(["convert", "x.pt", "--data", "y.csv", "--plugin", str(tmp_path / "missing.py")]) == 2


def test_plugin_from_an_installed_entry_point(tmp_path, plugin_file, monkeypatch):
    """A package that declares [project.entry-points."onnx_studio.sources"] acme = "acme_plugin"."""
    site = tmp_path / "site"
    dist = site / "acme_studio-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-studio\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{plugins.GROUP}]\nacme = acme_plugin_ep\n")
    (site / "acme_plugin_ep.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    ckpt = _acme_checkpoint(tmp_path / "scorer.acme")
    try:
        assert sources.load(ckpt, spec(ckpt)).kind == "acme"
    finally:
        sys.modules.pop("acme_plugin_ep", None)


def test_whole_pickled_hugging_face_model_with_trust(tmp_path):
    """torch.save(model) of a transformers classifier: optional forward arguments keep their defaults, the
    ModelOutput's keys name the graph outputs."""
    import transformers

    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(
        tiny.make_config("bert"), attn_implementation="eager"
    ).eval()
    folder = with_tokenizer(tmp_path / "pickled")
    torch.save(model, folder / "model.pt")
    with pytest.raises(UnsafeCheckpointError, match="BertForSequenceClassification"):
        sources.load(folder, spec(folder))
    loaded = sources.load(folder, spec(folder, trust_code=True))
    assert [i.name for i in loaded.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert loaded.output_names == ["logits"] and loaded.output_kinds == {"logits": "logits"}
    report = run(tmp_path, folder, trust_code=True)
    assert report.graph.outputs[0].shape == ["batch", 3]
