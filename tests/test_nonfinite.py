"""Non-finite values: counted in each runtime, never replaced by numbers in a difference. A NaN / inf in
ONNX Runtime where PyTorch is finite fails parity naming the rows, and the probes say "non-finite output";
the same NaN in both runtimes is reported as such. Models built here to produce them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from studio import convert
from studio.checks import parity, runtime
from studio.export import exporters as export_mod
from studio.sources.base import TABULAR, LoadedModel, ModelInput
from studio.spec import ConvertSpec, ExportDefaults, default

NAN, INF = float("nan"), float("inf")


def test_nan_in_onnx_only_fails_naming_rows_and_is_never_a_number():
    e = {"y": np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], dtype=np.float32)}
    a = {"y": e["y"].copy()}
    a["y"][1, 0] = NAN
    a["y"][3, :] = NAN
    d = parity.compare(e, a, 1e-4, 1e-3, {"y": "logits"})[0]
    assert not d.ok and math.isnan(d.max_abs_diff) and math.isnan(d.max_rel_diff)
    assert (d.ort_nan, d.ort_inf, d.torch_nan, d.torch_inf, d.same_nonfinite) == (3, 0, 0, 0, 0)
    assert d.nonfinite_rows == [2, 4]
    assert "ONNX Runtime where PyTorch is finite" in d.note and "rows 2, 4" in d.note


def test_same_nan_in_both_is_reported_not_a_difference():
    e = {"y": np.array([[1.0, NAN], [-INF, 4.0]])}
    a = {"y": np.array([[1.0 + 3e-5, NAN], [-INF, 4.0]])}
    d = parity.compare(e, a, 1e-4, 1e-3, {})[0]
    assert d.ok and d.same_nonfinite == 2 and d.nonfinite_rows == []
    assert (d.torch_nan, d.torch_inf, d.ort_nan, d.ort_inf) == (1, 1, 1, 1)
    assert d.max_abs_diff == pytest.approx(3e-5)  # over the finite elements, nothing filled in
    assert "alike in both runtimes" in d.note


@pytest.mark.parametrize("torch_value, ort_value", [(INF, -INF), (NAN, INF), (NAN, 1.0), (2.0, INF)])
def test_any_other_non_finite_disagreement_fails(torch_value, ort_value):
    e, a = {"y": np.array([[0.5, torch_value]])}, {"y": np.array([[0.5, ort_value]])}
    d = parity.compare(e, a, 1e-4, 1e-3, {})[0]
    assert not d.ok and math.isnan(d.max_abs_diff) and d.nonfinite_rows == [1]


class NanInOnnx(torch.nn.Module):
    """Finite in PyTorch; its ONNX graph adds 0 * log(row sum), NaN on rows whose sum is negative
    (the branch is chosen while tracing, as a model that behaves differently under export would)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x):
        s = x.sum(-1, keepdim=True)
        if torch.onnx.is_in_onnx_export():
            s = s + 0.0 * torch.log(s)  # the same values where log is defined, NaN elsewhere
        return self.lin(x) + s


class LogOfNegative(torch.nn.Module):
    """log of a row sum in both runtimes: NaN on the same rows in PyTorch and in ONNX Runtime."""

    def forward(self, x):
        return torch.log(x.sum(-1, keepdim=True)).expand(-1, 2) * 1.0


def _loaded(module) -> LoadedModel:
    torch.manual_seed(0)
    return LoadedModel(
        kind="test",
        path="-",
        module=module.eval(),
        adapter=lambda m, t: (m(t["x"]),),
        inputs=[ModelInput("x", TABULAR, column="x", width=3)],
        output_names=["y"],
        output_kinds={"y": "logits"},
    )


# rows 2 and 4 (1-based) sum to a negative number
X = {"x": torch.tensor([[1.0, 2.0, 3.0], [-4.0, 1.0, 0.5], [0.5, 0.5, 0.5], [-1.0, -1.0, -1.0]])}


def _checked(module, tmp_path):
    loaded = _loaded(module)
    options = ExportDefaults(exporter="torchscript")
    path = tmp_path / "model.onnx"
    export_mod.export(loaded, X, options, path)
    session = runtime.cpu_session(path)
    atol, rtol = default("atol"), default("rtol")
    p, _ = parity.parity(loaded, session, X, atol, rtol)
    dyn = parity.probes(loaded, session, X, export_mod.dynamic_axes_for(loaded, X, options), atol, rtol)
    return p, dyn


def test_model_nan_in_onnx_only_fails_parity_and_probes_say_non_finite(tmp_path):
    p, dyn = _checked(NanInOnnx(), tmp_path)
    d = p.outputs[0]
    assert not p.ok and d.nonfinite_rows == [2, 4] and d.ort_nan == 4 and d.torch_nan == 0
    assert math.isnan(d.max_abs_diff)
    failed = [pr for pr in dyn.probes if not pr.ok]
    assert failed, "the probes reach rows 2 or 4 too"
    assert all(pr.message.startswith("non-finite output") and "baked" not in pr.message for pr in failed)


def test_model_with_the_same_nan_in_both_passes_and_says_so(tmp_path):
    p, dyn = _checked(LogOfNegative(), tmp_path)
    d = p.outputs[0]
    assert p.ok and d.same_nonfinite == 4 and d.torch_nan == d.ort_nan == 4 and d.nonfinite_rows == []
    assert d.max_abs_diff < 1e-5 and dyn.ok


class PriceNet(torch.nn.Module):
    """A trusted pickled module on the sample's price / quantity: in its ONNX graph only, + 0 * log(price - 10),
    NaN on rows 2 and 5 of tiny.SAMPLE_CSV (prices 5.50 and 7.75)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 3)

    def forward(self, price, quantity):
        shift = price - 10.0
        if torch.onnx.is_in_onnx_export():
            shift = shift + 0.0 * torch.log(shift)
        return {"logits": self.lin(torch.cat([price, quantity], dim=-1)) + shift}


def test_convert_reports_non_finite_counts_in_json_markdown_and_cli_rows(tmp_path):
    """Through studio.convert: report.json holds the counts per output (the unknown difference is the
    string 'nan', valid JSON), report.md lists them, the verdict fails parity and the probes."""
    import tiny

    from studio.report.render import parity_rows

    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    torch.save(PriceNet().eval(), ckpt)
    sample = tiny.write_sample(tmp_path / "sample.csv")
    report = convert(
        ConvertSpec(
            checkpoint=str(ckpt),
            data=str(sample),
            out=str(tmp_path / "out"),
            exporter="torchscript",
            trust_code=True,
            latency_budget_s=0.02,
            cuda=False,
        )
    )
    assert not report.ok and "parity" in report.failed_checks
    d = report.parity.outputs[0]
    assert d.nonfinite_rows == [2, 5] and d.ort_nan == 6 and d.torch_nan == 0
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    out = data["parity"]["outputs"][0]
    assert out["max_abs_diff"] == "nan" and out["ort_nan"] == 6 and out["nonfinite_rows"] == [2, 5]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "ONNX Runtime 6 NaN, 0 inf" in md and "rows 2, 5" in md
    assert parity_rows(report.parity)[0][1] == "nan" and "FAIL — " in parity_rows(report.parity)[0][-1]
    assert any(p.message.startswith("non-finite output") for p in report.dynamic.probes if not p.ok)
