"""Checkpoint kinds beyond Hugging Face folders: DDP/FSDP/Lightning state dicts, torch.distributed.checkpoint
folders, backbone + custom head state dicts, single .safetensors files. Each kind is saved from a tiny model
and converted end to end (checker, parity, shape probe), or loaded and compared with the original model."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import pytest
import tiny
import torch
from torch import nn

from studio import sources
from studio.errors import CheckpointError
from studio.pipeline import convert
from studio.sources.base import LoadDefaults
from studio.spec import ConvertSpec

TESTS = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------- helpers


class Custom(nn.Module):
    """The class the issue is about: AutoModel backbone + dropout + Linear, saved as a state dict."""

    def __init__(self, config, num_labels: int = 4, head: str = "sequence", attr: str = "model"):
        super().__init__()
        import transformers

        setattr(self, attr, transformers.AutoModel.from_config(config, attn_implementation="eager"))
        self.attr, self.head = attr, head
        self.fc_dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(config.hidden_size, num_labels)

    def forward(self, input_ids, attention_mask):
        out = getattr(self, self.attr)(input_ids=input_ids, attention_mask=attention_mask)
        if self.head == "pooled":
            h = out.pooler_output
        elif self.head == "sequence":
            h = out.last_hidden_state[:, 0]
        else:
            h = out.last_hidden_state
        return self.fc(self.fc_dropout(h))


def custom(arch: str = "bert", head: str = "sequence", seed: int = 0, **kw) -> Custom:
    torch.manual_seed(seed)
    return Custom(tiny.make_config(arch), head=head, **kw).eval()


def config_folder(folder: Path, arch: str = "bert", tokenizer: bool = True) -> Path:
    """config.json (+ tokenizer files) of the backbone, as a user keeps them beside the weights."""
    folder.mkdir(parents=True, exist_ok=True)
    tiny.make_config(arch).save_pretrained(str(folder))
    if tokenizer:
        tiny.bert_tokenizer(folder / "_vocab").save_pretrained(str(folder))
        shutil.rmtree(folder / "_vocab")
    return folder


def zip_folder(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    return dest


def spec(ckpt, data="-", **kw) -> ConvertSpec:
    return ConvertSpec(checkpoint=str(ckpt), data=str(data), **kw)


def batch(n: int = 2, s: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, tiny.vocab_size(), (n, s), generator=g)
    mask = torch.ones(n, s, dtype=torch.long)
    mask[0, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def same_outputs(loaded, reference: nn.Module) -> None:
    """The loaded model computes what the trained model computed."""
    named = batch()
    with torch.no_grad():
        got = loaded.adapter(loaded.module, {k: v for k, v in named.items() if k in {i.name for i in loaded.inputs}})[0]
        want = reference(**named)
    want = want if isinstance(want, torch.Tensor) else want[0]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def run(tmp: Path, ckpt, exporter: str = "torchscript", **kw):
    """Convert end to end and require every check to pass."""
    sample = tiny.write_sample(tmp / "sample.csv")
    report = convert(
        spec(ckpt, sample, out=str(tmp / "out"), exporter=exporter, latency_budget_s=0.02, cuda=False, **kw)
    )
    assert report.checker.ok, report.checker.message
    assert report.parity.ok, [vars(o) for o in report.parity.outputs]
    assert report.dynamic.ok, [vars(p) for p in report.dynamic.probes]
    return report


# ----------------------------------------------------------------------------------------- FSDP / DDP / compile prefixes

PREFIXES = [
    "module.",
    "_fsdp_wrapped_module.",
    "_orig_mod.",
    "module._fsdp_wrapped_module.",
    "_forward_module._orig_mod.",
]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_wrapper_prefixes_load_and_compute_the_trained_model(tmp_path, prefix):
    ref = custom()
    folder = config_folder(tmp_path / "ckpt")
    # FSDP also inserts its segment inside nested keys (every wrapped layer)
    sd = {
        prefix + k.replace("encoder.layer.", "encoder.layer._fsdp_wrapped_module.")
        if "_fsdp" in prefix
        else prefix + k: v
        for k, v in ref.state_dict().items()
    }
    torch.save(sd, folder / "weights.pt")
    loaded = sources.load(folder, spec(folder, head="sequence"))
    assert loaded.kind == "state-dict" and loaded.output_names == ["logits"]
    assert loaded.info["num_labels"] == 4
    same_outputs(loaded, ref)


def test_fsdp_state_dict_converts_end_to_end(tmp_path):
    ref = custom(head="sequence")
    folder = config_folder(tmp_path / "ckpt")
    torch.save({"_fsdp_wrapped_module.module." + k: v for k, v in ref.state_dict().items()}, folder / "model.pth")
    report = run(tmp_path, folder, head="sequence")
    assert report.source["kind"] == "state-dict"
    assert [o.name for o in report.graph.outputs] == ["logits"]
    assert report.graph.outputs[0].shape[-1] == 4


def test_lightning_ckpt_with_token_head_converts(tmp_path):
    """The seed's CustomModel: per-token logits; Lightning stores it under state_dict with `model.`."""
    ref = custom(head="token")
    folder = config_folder(tmp_path / "run")
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {"model." + k: v for k, v in ref.state_dict().items()},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4}]}],
        "hyper_parameters": {"num_labels": 4, "classifier_dropout": 0.2, "model_name": "tiny-bert"},
    }
    torch.save(ckpt, folder / "epoch=3-step=120.ckpt")
    loaded = sources.load(folder, spec(folder, head="token"))
    assert loaded.info["layout"] == "lightning" and loaded.info["head"] == "token"
    same_outputs(loaded, ref)
    report = run(tmp_path, zip_folder(folder, tmp_path / "upload.zip"), head="token")
    assert report.graph.outputs[0].shape == ["batch", "sequence", 4]


def test_pooled_head_uses_the_backbone_pooler(tmp_path):
    ref = custom(head="pooled")
    folder = config_folder(tmp_path / "ckpt")
    torch.save(ref.state_dict(), folder / "w.pt")
    loaded = sources.load(folder, LoadDefaults(head="pooled"))  # the loader options alone
    assert loaded.info["head"] == "pooled"
    same_outputs(loaded, ref)


@pytest.mark.parametrize("arch,attr", [("distilbert", "backbone"), ("roberta", "encoder"), ("deberta-v2", "model")])
def test_other_backbones_and_attribute_names(tmp_path, arch, attr):
    ref = custom(arch, head="sequence", attr=attr)
    folder = config_folder(tmp_path / "ckpt", arch)
    torch.save({"module." + k: v for k, v in ref.state_dict().items()}, folder / "pytorch_weights.bin")
    loaded = sources.load(folder, spec(folder, head="sequence"))
    assert loaded.info["backbone_prefix"] == f"module.{attr}"
    same_outputs(loaded, ref)


def test_backbone_without_pooler_and_without_head_exports_hidden_states(tmp_path):
    import transformers

    torch.manual_seed(0)
    ref = transformers.AutoModel.from_config(
        tiny.make_config("bert"), add_pooling_layer=False, attn_implementation="eager"
    ).eval()
    folder = config_folder(tmp_path / "ckpt")
    torch.save({"_orig_mod." + k: v for k, v in ref.state_dict().items()}, folder / "encoder.pt")
    loaded = sources.load(folder, spec(folder))
    assert loaded.output_names == ["last_hidden_state"] and loaded.output_kinds["last_hidden_state"] == "hidden"
    named = batch()
    with torch.no_grad():
        got = loaded.adapter(loaded.module, {k: named[k] for k in ("input_ids", "attention_mask")})[0]
        torch.testing.assert_close(got, ref(**named).last_hidden_state)


def test_hf_task_state_dict_loads_as_its_own_class(tmp_path):
    """torch.save(BertForSequenceClassification.state_dict()) + its config: its own head, no --head."""
    import transformers

    torch.manual_seed(0)
    config = tiny.make_config("bert", num_labels=3)
    config.architectures = ["BertForSequenceClassification"]
    config.id2label, config.label2id = (
        {0: "keep", 1: "return", 2: "complaint"},
        {"keep": 0, "return": 1, "complaint": 2},
    )
    ref = transformers.AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").eval()
    folder = tmp_path / "ckpt"
    config.save_pretrained(str(folder))
    tiny.bert_tokenizer(folder / "_v").save_pretrained(str(folder))
    torch.save({"module." + k: v for k, v in ref.state_dict().items()}, folder / "checkpoint.pt")
    loaded = sources.load(folder, spec(folder))
    assert loaded.info["architecture"] == "BertForSequenceClassification"
    assert loaded.info["labels"] == ["keep", "return", "complaint"]
    same_outputs(loaded, lambda **kw: ref(**kw).logits)


def test_custom_state_dict_under_a_hugging_face_file_name(tmp_path):
    """config.json + pytorch_model.bin that is really Custom.state_dict(): never loaded half-random."""
    ref = custom(head="sequence")
    folder = config_folder(tmp_path / "ckpt")
    torch.save(ref.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="--head sequence"):
        sources.load(folder, spec(folder))
    loaded = sources.load(folder, spec(folder, head="sequence"))
    assert loaded.kind == "state-dict"
    same_outputs(loaded, ref)


# ----------------------------------------------------------------------------------------- safetensors


def test_single_safetensors_with_config_flag_converts_with_dynamo(tmp_path):
    from safetensors.torch import save_file

    ref = custom(head="sequence")
    weights = tmp_path / "upload" / "classifier.safetensors"
    weights.parent.mkdir()
    save_file({"model." + k: v.contiguous() for k, v in ref.state_dict().items()}, str(weights))
    cfg = config_folder(tmp_path / "backbone")
    loaded = sources.load(weights, spec(weights, config=str(cfg), head="sequence"))
    assert loaded.info["layout"] == "safetensors"
    same_outputs(loaded, ref)
    report = run(tmp_path, weights, exporter="dynamo", config=str(cfg / "config.json"), head="sequence")
    assert report.export.exporter.startswith("dynamo")


def test_safetensors_without_config_says_what_is_missing(tmp_path):
    from safetensors.torch import save_file

    ref = custom()
    weights = tmp_path / "alone" / "model.safetensors"
    weights.parent.mkdir()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(weights))
    with pytest.raises(CheckpointError, match=r"config\.json.*\n.*--config"):
        sources.load(weights, spec(weights))


# ----------------------------------------------------------------------------------------- mismatches


def test_head_must_be_chosen_and_is_described(tmp_path):
    folder = config_folder(tmp_path / "ckpt")
    torch.save(custom().state_dict(), folder / "w.pt")
    with pytest.raises(CheckpointError, match=r"Linear head 'fc' \(32 -> 4\).*--head sequence \| .*token"):
        sources.load(folder, spec(folder))


def test_missing_and_unexpected_keys_are_listed_with_the_closest_prefix(tmp_path):
    folder = config_folder(tmp_path / "ckpt")
    sd = custom().state_dict()
    drop = [k for k in sd if k.startswith("model.encoder.layer.1.")]
    for k in drop:
        sd.pop(k)
    torch.save(sd, folder / "w.pt")
    with pytest.raises(CheckpointError) as e:
        sources.load(folder, spec(folder, head="sequence"))
    msg = str(e.value)
    assert f"Missing {len(drop)} keys" in msg and "'model.encoder.layer.1.attention" in msg

    # extra layers the config does not have: unexpected backbone keys
    sd = custom().state_dict()
    sd.update({k.replace("layer.1.", "layer.2."): v for k, v in sd.items() if "layer.1." in k})
    torch.save(sd, folder / "w.pt")
    with pytest.raises(
        CheckpointError, match=r"(?s)Unexpected \d+ keys: 'model\.encoder\.layer\.2\..*num_hidden_layers=2"
    ):
        sources.load(folder, spec(folder, head="sequence"))


def test_weights_of_another_model_suggest_the_prefix(tmp_path):
    folder = config_folder(tmp_path / "ckpt")
    sd = {"backbone." + k.split(".", 1)[1]: v for k, v in custom().state_dict().items() if k.startswith("model.")}
    sd = {k.replace("backbone.embeddings.", "backbone.embed."): v for k, v in sd.items()}
    torch.save(sd, folder / "w.pt")
    with pytest.raises(CheckpointError) as e:
        sources.load(folder, spec(folder))
    msg = str(e.value)
    assert "Missing 5 keys" in msg and "Unexpected 5 keys: 'backbone.embed.word_embeddings.weight'" in msg
    assert "Closest match: checkpoint keys under 'backbone.embed.' look like the expected 'backbone.embeddings.'" in msg


def test_head_that_is_not_one_linear_layer_is_explained(tmp_path):
    folder = config_folder(tmp_path / "ckpt")
    sd = custom().state_dict()
    sd["classifier.dense.weight"] = torch.zeros(32, 32)
    sd["classifier.dense.bias"] = torch.zeros(32)
    torch.save(sd, folder / "w.pt")
    with pytest.raises(CheckpointError, match="one Linear layer") as e:
        sources.load(folder, spec(folder, head="sequence"))
    assert "plugin" in str(e.value)


def test_head_chosen_but_checkpoint_has_none(tmp_path):
    folder = config_folder(tmp_path / "ckpt")
    sd = {k: v for k, v in custom().state_dict().items() if k.startswith("model.")}
    torch.save(sd, folder / "w.pt")
    with pytest.raises(CheckpointError, match="only the backbone"):
        sources.load(folder, spec(folder, head="token"))


# ----------------------------------------------------------------------------------------- torch.distributed.checkpoint


def _dcp_save_single(state, folder: Path) -> Path:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    return folder


def test_dcp_folder_with_optimizer_and_scalars_loads_only_weights(tmp_path, monkeypatch):
    ref = custom(head="sequence")
    up = config_folder(tmp_path / "upload")
    opt = torch.optim.AdamW(ref.parameters())
    ref(**batch()).sum().backward()
    opt.step()
    ref.eval()
    _dcp_save_single(
        {"model": ref.state_dict(), "optimizer_0": opt.state_dict(), "step": 7, "meta": {"lr": 0.1}}, up / "checkpoint"
    )
    assert (up / "checkpoint" / ".metadata").is_file()
    import torch.distributed.checkpoint.filesystem as fs

    def no_pickle(*a, **k):
        raise AssertionError("DCP metadata must not be read with pickle.load")

    monkeypatch.setattr(fs.pickle, "load", no_pickle)
    loaded = sources.load(zip_folder(up, tmp_path / "dcp.zip"), spec(tmp_path / "dcp.zip", head="sequence"))
    assert loaded.info["layout"] == "dcp" and loaded.info["backbone_prefix"] == "model"
    same_outputs(loaded, ref)


FSDP_SCRIPT = textwrap.dedent("""
    import os, sys, warnings
    warnings.simplefilter("ignore")
    sys.path[:0] = [{tests!r}]
    import torch, torch.distributed as dist, torch.multiprocessing as mp
    import torch.distributed.checkpoint as dcp
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from test_sources import custom

    def worker(rank, out, port):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=2)
        model = custom(head="sequence")          # same seed in every rank and in the test
        for layer in model.model.encoder.layer:
            fully_shard(layer)
        fully_shard(model)
        sd = get_model_state_dict(model)        # DTensor shards, one half per rank
        assert type(next(iter(sd.values()))).__name__ == "DTensor"
        dcp.save({{"model": sd}}, checkpoint_id=out)
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.start_processes(worker, args=(sys.argv[1], int(sys.argv[2])), nprocs=2, start_method="fork")
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_sharded_dcp_zip_converts_end_to_end(tmp_path):
    """Two FSDP2 ranks (gloo, CPU) write a sharded DCP checkpoint; the studio consolidates it in-process."""
    import torch.distributed as dist

    if not dist.is_available() or not sys.platform.startswith("linux"):
        pytest.skip("needs torch.distributed with gloo and the fork start method (Linux)")
    up = config_folder(tmp_path / "upload")
    script = tmp_path / "fsdp_save.py"
    script.write_text(FSDP_SCRIPT.format(tests=str(TESTS)))
    proc = subprocess.run(
        [sys.executable, str(script), str(up / "sharded"), str(_free_port())],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((up / "sharded").glob("*.distcp"))) == 2
    upload = zip_folder(up, tmp_path / "fsdp.zip")
    loaded = sources.load(upload, spec(upload, head="sequence"))
    assert loaded.info["shards"] == 2
    same_outputs(loaded, custom(head="sequence"))
    report = run(tmp_path, upload, head="sequence")
    assert report.source["layout"] == "dcp"
