"""Latency you can trust: warm-up, a time budget, percentiles, same threads, batch 1 and the sample's,
and CUDA only when a session truly runs on it. (Timings are not asserted: the machine may be busy.)"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from studio import ConvertSpec, convert, latency, runtime
from studio.report import LatencyInfo, Timing
from studio.report_render import latency_rows, machine_line


def test_time_fn_warms_up_then_fills_the_budget():
    calls = []
    p50, p90, p99, n = latency.time_fn(lambda: calls.append(1), budget_s=0.05, warmup=3, min_iters=5)
    assert len(calls) == 3 + n and n >= 5 and p50 <= p90 <= p99


def test_slow_calls_shorten_the_warm_up_not_the_minimum_iterations():
    p50, p90, p99, n, warm = latency._timed(lambda: time.sleep(0.02), budget_s=0.01, warmup=3, min_iters=5)
    assert warm == latency.MIN_WARMUP and n == 5 and p50 >= 15


def test_iterations_are_bounded():
    *_, n, warm = latency._timed(lambda: None, budget_s=5.0, warmup=1, min_iters=2, max_iters=50)
    assert n == 50 and warm == 1


@pytest.fixture(scope="module")
def report(hf_folders, sample_csv, tmp_path_factory):
    return convert(
        ConvertSpec(
            checkpoint=str(hf_folders["bert"]),
            data=str(sample_csv),
            out=str(tmp_path_factory.mktemp("lat") / "o"),
            exporter="torchscript",
            latency_budget_s=0.02,
            threads=1,
        )
    )


def test_measure_reports_both_batches_same_threads_and_the_machine(report):
    lat = report.latency
    assert lat.torch_cpu.threads == lat.ort_cpu.threads == lat.threads == 1
    assert lat.torch_cpu.batch == lat.ort_cpu.batch == report.parity.rows == 5
    assert lat.torch_cpu.sequence == lat.ort_cpu.sequence and lat.ort_cpu.sequence > 1
    for key in ("torch_cpu", "ort_cpu"):
        t = lat.batch1[key]
        assert t.batch == 1 and t.threads == 1 and t.iterations >= latency.MIN_ITERS and t.warmup >= 1
    assert lat.ort_cpu.provider == "CPUExecutionProvider" and lat.torch_cpu.provider == "torch-cpu"
    assert lat.machine["logical_cpus"] >= 1 and "load_avg_before" in lat.machine
    assert lat.seconds is not None and lat.seconds > 0


def test_cuda_numbers_only_from_a_session_that_really_runs_on_cuda(report):
    lat = report.latency
    cs = runtime.cuda_session(report.options["out"] + "/model.onnx")
    if cs.session is None:  # this machine: a reason, never a number
        assert lat.ort_cuda is None and "ort_cuda" not in lat.batch1
        assert lat.cuda_unavailable_reason and lat.errors["ort_cuda"]
    else:  # a GPU machine: IO binding, and CUDA really first in the session's providers
        assert lat.ort_cuda.provider == runtime.CUDA and lat.ort_cuda.io_binding
        assert lat.batch1["ort_cuda"].batch == 1
    if not torch.cuda.is_available():
        assert lat.torch_cuda is None and "torch" in lat.errors["torch_cuda"].lower()


def test_ort_cuda_refuses_a_session_that_fell_back_to_cpu(report):
    sess = runtime.cpu_session(report.options["out"] + "/model.onnx")
    with pytest.raises(RuntimeError, match="not CUDA"):
        latency.ort_cuda(sess, {}, 0.01, 1, None)


def test_no_cuda_flag_records_why(hf_folders, sample_csv, tmp_path):
    loaded_report = convert(
        ConvertSpec(
            checkpoint=str(hf_folders["bert"]),
            data=str(sample_csv),
            out=str(tmp_path / "o"),
            exporter="torchscript",
            latency_budget_s=0.01,
            cuda=False,
        )
    )
    assert loaded_report.latency.cuda_unavailable_reason == "CUDA measurements were turned off (--no-cuda)"


def test_side_by_side_alternates_blocks_and_survives_a_failing_runner():
    log = []

    def broken():
        raise ValueError("no")

    fns = {"a": lambda: log.append("a"), "b": lambda: log.append("b"), "bad": broken}
    rounds = []
    out = latency.side_by_side(
        fns,
        budget_s=0.03,
        rounds=3,
        warmup=2,
        min_iters=6,
        max_iters=30,
        on_round=lambda done, total: rounds.append((done, total, len(log))),
    )
    assert [(d, t) for d, t, _ in rounds] == [(1, 3), (2, 3), (3, 3)] and rounds[-1][2] == len(log)
    blocks = [k for i, k in enumerate(log) if i == 0 or log[i - 1] != k]
    assert blocks == ["a", "b"] * 3  # round after round, each runner in turn
    assert isinstance(out["bad"], ValueError)
    for key in ("a", "b"):
        p50, p90, p99, n, untimed = out[key]
        assert 6 <= n <= 30 and untimed == 2 + 2  # the warm-up, then one untimed call per later round
        assert log.count(key) == n + untimed


def test_measure_all_times_every_file_side_by_side(report):
    from studio import sources
    from studio.batch import build_batch
    from studio.sample import read_sample

    spec = ConvertSpec(checkpoint=report.source["path"], data=report.options["data"]).validated()
    loaded = sources.load(spec.checkpoint, spec)
    tensors = build_batch(read_sample(spec.data), loaded, spec.roles, spec).tensors
    path = report.options["out"] + "/model.onnx"
    moved: list[float] = []
    got = latency.measure_all(
        loaded,
        {"model": latency.Target(path), "copy": latency.Target(path, cuda_skip="CPU only")},
        tensors,
        threads=1,
        budget_s=0.01,
        cuda=True,
        progress=moved.append,
    )
    # the progress bar moves after every round at both sizes (the sample's batch, then batch 1)
    assert moved == pytest.approx([k / (2 * latency.ROUNDS) for k in range(1, 2 * latency.ROUNDS + 1)])
    model, copy = got["model"], got["copy"]
    assert model.torch_cpu.batch == model.ort_cpu.batch == copy.ort_cpu.batch == 5
    assert copy.torch_cpu is None and copy.batch1["ort_cpu"].batch == 1 and copy.ort_cpu.threads == 1
    assert copy.errors["ort_cuda"] == copy.cuda_unavailable_reason == "CPU only"
    assert model.seconds == copy.seconds and model.machine == copy.machine  # one measurement


def test_single_row_sample_has_no_separate_batch1_runs():
    assert latency._batch1({"x": torch.zeros(1, 4, dtype=torch.int64)}) is None
    b1 = latency._batch1({"x": torch.arange(8).reshape(2, 4)})
    assert b1["x"].tolist() == [[0, 1, 2, 3]]


def test_shape_reads_batch_and_sequence_from_torch_or_numpy():
    assert latency.shape_of({"ids": torch.zeros(3, 7, dtype=torch.int64)}) == (3, 7)
    assert latency.shape_of({"ids": np.zeros((3, 7), np.int32)}) == (3, 7)
    assert latency.shape_of({"x": torch.zeros(4, 2)}) == (4, None)  # tabular only: no sequence


def test_rows_label_batch1_and_io_binding_and_machine_line():
    t = Timing(1.0, 2.0, 3.0, 10, 8, 128, 2, "CPUExecutionProvider")
    cuda = Timing(0.5, 0.6, 0.7, 100, 8, 128, None, "CUDAExecutionProvider", warmup=3, io_binding=True)
    lat = LatencyInfo(
        torch_cpu=t,
        ort_cpu=t,
        ort_cuda=cuda,
        batch1={"ort_cpu": Timing(0.1, 0.2, 0.3, 50, 1, 128, 2, "x")},
        machine={"cpu": "Test CPU", "logical_cpus": 2, "load_avg_before": 3.5, "load_avg_after": 1.0},
    )
    rows = {r[0]: r for r in latency_rows(lat)}
    assert rows["ORT CPU (batch 1)"][5] == "1x128" and rows["ORT CPU"][5] == "8x128"
    assert rows["ORT CUDA"][-1] == "CUDAExecutionProvider + IO binding"
    line = machine_line(lat)
    assert "Test CPU" in line and "3.5 before" in line and "pessimistic" in line
    assert machine_line(LatencyInfo()) == ""
