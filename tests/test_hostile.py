"""Hostile and broken uploads: each is refused with a clear, typed error; no code runs; nothing is
written outside the job's folders."""

from __future__ import annotations

import io
import os
import pickle
import stat
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest
import tiny
import torch

from studio import sources
from studio.cli.commands import main as cli_main
from studio.errors import CheckpointError, StudioError, UnsafeCheckpointError, UnsafePathError
from studio.sources import archive
from studio.sources.base import LoadDefaults


def spec(path, **kw):
    return LoadDefaults(**kw)  # the loader options alone (a ConvertSpec is one too)


@pytest.fixture(autouse=True)
def private_tmp(tmp_path, monkeypatch):
    """Archives are unpacked under tempfile's folder: point it at a folder the test can watch."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    yield scratch
    assert not list(scratch.glob("studio-*")), "an unpacked upload was left behind"


class RunsCommand:
    """Unpickling this runs a shell command (here: creating a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def marker_in(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def bert_config_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tiny.make_config("bert").save_pretrained(str(folder))
    return folder


# ----------------------------------------------------------------------------------------- code in pickles


@pytest.mark.parametrize("layout", ["torch-zip", "torch-legacy", "raw-pickle", "nested-in-state-dict"])
def test_pickle_that_would_run_a_command_is_refused_and_nothing_runs(tmp_path, layout):
    marker = marker_in(tmp_path)
    path = tmp_path / "model.pt"
    payload = RunsCommand(marker)
    if layout == "torch-zip":
        torch.save(payload, path)
    elif layout == "torch-legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    elif layout == "raw-pickle":
        path.write_bytes(pickle.dumps(payload, protocol=4))
    else:
        torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"x": payload}}, path)
    with pytest.raises(UnsafeCheckpointError, match="could run code|can run code") as e:
        sources.load(path, spec(path))
    assert "refuse" in str(e.value)
    assert not marker.exists()


def test_hostile_pickle_through_the_cli_exits_2(tmp_path, capsys):
    marker = marker_in(tmp_path)
    path = tmp_path / "weights.bin"
    torch.save(RunsCommand(marker), path)
    sample = tiny.write_sample(tmp_path / "s.csv")
    assert cli_main(["convert", str(path), "--data", str(sample), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "can run code" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_hostile_pytorch_model_bin_in_a_hf_zip(tmp_path):
    marker = marker_in(tmp_path)
    folder = bert_config_folder(tmp_path / "hf")
    torch.save(RunsCommand(marker), folder / "pytorch_model.bin")
    upload = _zip_dir(folder, tmp_path / "hf.zip")
    with pytest.raises(StudioError):
        sources.load(upload, spec(upload))
    assert not marker.exists()


def test_unknown_classes_are_named_in_the_refusal(tmp_path):
    import argparse

    path = tmp_path / "epoch=1.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": argparse.Namespace(lr=1)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"argparse\.Namespace"):
        sources.load(path, spec(path))


def test_dcp_metadata_that_would_run_a_command_is_refused(tmp_path):
    marker = marker_in(tmp_path)
    folder = bert_config_folder(tmp_path / "up")
    ckpt = folder / "ckpt"
    ckpt.mkdir()
    (ckpt / ".metadata").write_bytes(pickle.dumps(RunsCommand(marker)))
    (ckpt / "__0_0.distcp").write_bytes(b"\0" * 16)
    upload = _zip_dir(folder, tmp_path / "dcp.zip")
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system|os\.system"):
        sources.load(upload, spec(upload))
    assert not marker.exists()


def _real_dcp(folder: Path) -> Path:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": {"w": torch.arange(6.0)}}, checkpoint_id=str(folder), no_dist=True)
    return folder


def test_dcp_non_tensor_entry_that_would_run_a_command_is_never_read(tmp_path):
    """torch's own DCP loader reads non-tensor entries with torch.load(weights_only=False)."""
    import torch.distributed.checkpoint as dcp

    marker = marker_in(tmp_path)
    folder = bert_config_folder(tmp_path / "up")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(
            {"model": {"w": torch.zeros(3)}, "extra": RunsCommand(marker)},
            checkpoint_id=str(folder / "ckpt"),
            no_dist=True,
        )
    assert not marker.exists()  # saving pickled it; only loading it would run it
    # the weights are read ('extra' is not): 24 bytes cannot fill the config's model
    with pytest.raises(CheckpointError, match="do not fit|cannot belong to this config"):
        sources.load(folder, spec(folder))
    assert not marker.exists()


def test_dcp_metadata_pointing_outside_the_folder_is_refused(tmp_path):
    secret = tmp_path / "secret.distcp"
    secret.write_bytes(b"x" * 4096)
    ckpt = _real_dcp(tmp_path / "up" / "ckpt")
    md = pickle.loads((ckpt / ".metadata").read_bytes())
    for info in md.storage_data.values():
        info.relative_path = "../../secret.distcp"
    (ckpt / ".metadata").write_bytes(pickle.dumps(md))
    with pytest.raises(UnsafePathError, match="not a file in the checkpoint folder"):
        sources.load(tmp_path / "up", spec(tmp_path / "up"))


def test_dcp_with_a_truncated_shard_or_forged_sizes(tmp_path):
    ckpt = _real_dcp(tmp_path / "a" / "ckpt")
    shard = next(ckpt.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="truncated"):
        sources.load(tmp_path / "a", spec(tmp_path / "a"))
    ckpt = _real_dcp(tmp_path / "b" / "ckpt")
    md = pickle.loads((ckpt / ".metadata").read_bytes())
    md.state_dict_metadata["model.w"].size = torch.Size([10**12])  # would allocate 4 TB
    (ckpt / ".metadata").write_bytes(pickle.dumps(md))
    with pytest.raises(CheckpointError, match="declares .* bytes of tensors"):
        sources.load(tmp_path / "b", spec(tmp_path / "b"))


# ----------------------------------------------------------------------------------------- zip archives


def _zip_dir(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    return dest


def _zip_with(dest: Path, members: list[tuple[str, bytes]], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        zf.writestr("model/config.json", "{}")
        for name, data in members:
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo("model/vocab.txt")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, symlink)
    return dest


@pytest.mark.parametrize(
    "name", ["../escaped.txt", "model/../../escaped.txt", "/tmp/escaped_abs.txt", "C:/escaped.txt", "..\\escaped.txt"]
)
def test_zip_members_that_escape_are_refused_and_not_written(tmp_path, name, private_tmp):
    upload = _zip_with(tmp_path / "evil.zip", [(name, b"owned")])
    with pytest.raises(UnsafePathError, match="points outside the archive"):
        sources.load(upload, spec(upload))
    for where in (tmp_path, tmp_path.parent, private_tmp, private_tmp.parent, Path("/tmp")):
        assert not (where / "escaped.txt").exists()
    assert not Path("/tmp/escaped_abs.txt").exists()


def test_uploads_unpack_inside_the_given_job_folder(tmp_path, private_tmp):
    job = tmp_path / "job"
    job.mkdir()
    upload = _zip_with(tmp_path / "evil.zip", [("../escaped.txt", b"owned")])
    with pytest.raises(UnsafePathError):
        sources.load(upload, spec(upload), workdir=job)
    assert list(job.iterdir()) == [] and not (tmp_path / "escaped.txt").exists()


def test_zip_symlink_member_is_refused(tmp_path):
    upload = _zip_with(tmp_path / "link.zip", [], symlink="/etc/passwd")
    with pytest.raises(UnsafePathError, match="link or special file"):
        sources.load(upload, spec(upload))


def test_zip_bombs_are_refused(tmp_path):
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(archive.MAX_MEMBERS + 1):
            zf.writestr(f"f/{i}", b"")
    with pytest.raises(CheckpointError, match=f"limit is {archive.MAX_MEMBERS}"):
        sources.load(many, spec(many))

    dense = tmp_path / "dense.zip"
    with zipfile.ZipFile(dense, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model/model.safetensors", b"\0" * (60 * 1024**2))
    with pytest.raises(CheckpointError, match="zip bomb"):
        sources.load(dense, spec(dense))

    with pytest.raises(CheckpointError, match="unpacks to more than"):
        archive.extract_zip(
            _zip_with(tmp_path / "big.zip", [("model/a.bin", b"1" * 5000)]), tmp_path / "x", max_total_bytes=4096
        )
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").rglob("a.bin"))


def test_zip_inside_zip_is_refused(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("model.pt", b"x")
    upload = _zip_with(tmp_path / "nested.zip", [("model/inner.zip", inner.getvalue())])
    with pytest.raises(CheckpointError, match="archive inside the archive"):
        sources.load(upload, spec(upload))


# ----------------------------------------------------------------------------------------- broken files


def _state_dict_file(path: Path) -> Path:
    torch.manual_seed(0)
    torch.save({"layer.weight": torch.randn(64, 64), "layer.bias": torch.randn(64)}, path)
    return path


def test_truncated_and_corrupted_checkpoints(tmp_path):
    good = _state_dict_file(tmp_path / "good.pt")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        sources.load(truncated, spec(truncated))
    corrupted = tmp_path / "corrupted.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(corrupted, "w") as zout:
        for item in zin.infolist():
            body = zin.read(item.filename)
            zout.writestr(item, b"\x80\x02garbage" if item.filename.endswith("data.pkl") else body)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint|could run code"):
        sources.load(corrupted, spec(corrupted))
    from safetensors.torch import save_file

    st = tmp_path / "w.safetensors"
    save_file({"a": torch.randn(128, 128)}, str(st))
    st.write_bytes(st.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="not a readable .safetensors file"):
        sources.load(st, spec(st))


def test_wrong_extension_is_read_by_content_or_explained(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx_as_pt = tmp_path / "model.pt"
    onnx.save(helper.make_model(graph, producer_name="pytorch"), str(onnx_as_pt))
    with pytest.raises(CheckpointError, match="an ONNX model .*studio inspect"):
        sources.load(onnx_as_pt, spec(onnx_as_pt))

    text = tmp_path / "weights.bin"
    text.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n")
    with pytest.raises(CheckpointError, match="Git LFS pointer"):
        sources.load(text, spec(text))

    html = tmp_path / "model.ckpt"
    html.write_text("<!DOCTYPE html><html>Not found</html>")
    with pytest.raises(CheckpointError, match="HTML page"):
        sources.load(html, spec(html))

    # a safetensors file named .pt (and a torch file named .safetensors) is read by its content
    from safetensors.torch import save_file

    folder = bert_config_folder(tmp_path / "st")
    save_file({"x": torch.zeros(1)}, str(folder / "model.pt"))
    with pytest.raises(CheckpointError) as e:  # read as safetensors: 4 bytes cannot fill a BERT config
        sources.load(folder, spec(folder))
    assert "do not fit" in str(e.value) or "cannot belong to this config" in str(e.value)


def test_empty_inputs(tmp_path):
    empty = tmp_path / "model.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        sources.load(empty, spec(empty))
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "README.txt").write_text("hi")
    with pytest.raises(CheckpointError, match=r"no checkpoint recognised in this folder \(found: README.txt\)"):
        sources.load(folder, spec(folder))
    cfg_only = bert_config_folder(tmp_path / "cfg")
    with pytest.raises(CheckpointError, match="no checkpoint recognised"):
        sources.load(cfg_only, spec(cfg_only))
    empty_zip = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty_zip, "w"):
        pass
    with pytest.raises(CheckpointError, match="empty zip"):
        sources.load(empty_zip, spec(empty_zip))
    with pytest.raises(CheckpointError, match="does not exist"):
        sources.load(tmp_path / "nope.pt", spec(tmp_path / "nope.pt"))


def test_state_dict_whose_shapes_do_not_fit_the_config(tmp_path):
    import transformers

    torch.manual_seed(0)
    config = tiny.make_config("bert")
    model = transformers.AutoModel.from_config(config)
    folder = tmp_path / "ckpt"
    bigger = tiny.make_config("bert")
    bigger.vocab_size = 500  # the config the user brought is not the one the weights were trained with
    bigger.save_pretrained(str(folder))
    torch.save(model.state_dict(), folder / "weights.pt")
    with pytest.raises(CheckpointError) as e:
        sources.load(folder, spec(folder))
    msg = str(e.value)
    assert "'embeddings.word_embeddings.weight': checkpoint [120, 32] vs config [500, 32]" in msg
    assert "vocab_size=500" in msg


# ----------------------------------------------------------------------------------------- ONNX external data


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin"])
def test_onnx_external_data_outside_the_folder_is_refused_by_inspect(tmp_path, capsys, location):
    from onnx import TensorProto, helper

    (tmp_path / "outside.bin").write_bytes(b"\0" * 16)
    folder = tmp_path / "upload"
    folder.mkdir()
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    weight.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = k, v
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        initializer=[weight],
    )
    path = folder / "model.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    assert cli_main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "outside the model's folder; refused" in err and "Traceback" not in err
