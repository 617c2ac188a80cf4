"""The big-model path (weights in external data), tested cheaply: a tiny model with the external-data
threshold lowered to zero. A real > 2 GB run is an optional benchmark size (benchmarks/run.py --sizes big)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from studio import ConvertSpec, artifacts, convert
from studio.checks.graph_info import check
from studio.export import exporters as export_mod


@pytest.fixture(scope="module")
def big(hf_folders, sample_csv, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setattr(export_mod, "EXTERNAL_DATA_BYTES", 0)
    try:
        out = tmp_path_factory.mktemp("big") / "out"
        report = convert(
            ConvertSpec(
                checkpoint=str(hf_folders["bert"]),
                data=str(sample_csv),
                out=str(out),
                exporter="dynamo",
                latency_budget_s=0.02,
                cuda=False,
                variants=("optimized", "int8", "fp16"),
            )
        )
    finally:
        mp.undo()
    return report, out


def _run(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})[0]


def test_weights_go_to_external_data_and_every_check_still_runs(big):
    report, out = big
    assert (out / "model.onnx.data").is_file() and report.files["data"] == "model.onnx.data"
    assert report.export.external_data and report.export.exporter == "dynamo"
    assert report.checker.ok and check(out / "model.onnx").ok  # checked by path
    assert report.parity.ok and report.dynamic.ok and report.ok, report.failed_checks
    data = (out / "model.onnx.data").stat().st_size
    assert data > 0 and report.graph.size_bytes == (out / "model.onnx").stat().st_size + data
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert {p.key for p in model.metadata_props} >= {"studio.version", "studio.opset"}  # annotated in place


def test_variants_of_an_external_data_model_keep_external_data(big):
    report, out = big
    for v in report.variants:
        assert v.ok, (v.name, v.error)
        assert v.files == [v.file, v.file + ".data"], v.files
        assert v.size_bytes == sum((out / f).stat().st_size for f in v.files)
        model = onnx.load(str(out / v.file), load_external_data=False)
        locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations == {(out / v.file).name + ".data"}  # its own data file, beside it
    opt = next(v for v in report.variants if v.name == "optimized")
    assert opt.method == "onnxscript ORT fusions"  # the new exporter's graph, fused without loading weights


def test_downloadable_as_one_zip_that_runs_where_it_is_unpacked(big, tmp_path):
    report, out = big
    feeds = dict(np.load(out / "sample_inputs.npz"))
    expected = _run(out / "model.onnx", feeds)
    for name in ["model.onnx"] + [v.file for v in report.variants]:
        z = artifacts.zip_artifact(out / name, tmp_path / (name.replace("/", "_") + ".zip"))
        with zipfile.ZipFile(z) as zf:
            names = sorted(zf.namelist())
            zf.extractall(tmp_path / z.stem)
        stem = name.split("/")[-1]
        assert names == [stem, stem + ".data"]
        got = _run(tmp_path / z.stem / stem, feeds)
        assert got.shape == expected.shape and (got.argmax(-1) == expected.argmax(-1)).all()


def test_report_json_names_the_data_files(big):
    report, out = big
    data = json.loads((out / "report.json").read_text())
    assert data["export"]["external_data"] is True and data["files"]["data"] == "model.onnx.data"
    assert all(len(v["files"]) == 2 for v in data["variants"])


def test_legacy_exporter_also_writes_external_data_above_the_threshold(hf_folders, sample_csv, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "EXTERNAL_DATA_BYTES", 0)
    report = convert(
        ConvertSpec(
            checkpoint=str(hf_folders["bert"]),
            data=str(sample_csv),
            out=str(tmp_path / "o"),
            exporter="torchscript",
            latency_budget_s=0.01,
            cuda=False,
        )
    )
    assert report.export.exporter == "torchscript" and report.export.external_data
    assert (tmp_path / "o" / "model.onnx.data").is_file() and report.ok


def test_small_models_stay_one_file(hf_folders, sample_csv, tmp_path):
    report = convert(
        ConvertSpec(
            checkpoint=str(hf_folders["bert"]),
            data=str(sample_csv),
            out=str(tmp_path / "o"),
            exporter="torchscript",
            latency_budget_s=0.01,
            cuda=False,
        )
    )
    assert not report.export.external_data and "data" not in report.files
    assert not (tmp_path / "o" / "model.onnx.data").exists()
    assert export_mod.EXTERNAL_DATA_BYTES == 256 * 1024**2
