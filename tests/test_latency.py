"""Latency you can trust: warm-up, a time budget, percentiles, same threads, batch 1 and the sample's,
and CUDA only when a session truly runs on it. (Timings are not asserted: the machine may be busy.)"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from studio import ConvertSpec, convert
from studio.checks import runtime
from studio.report.model import LatencyInfo, Timing
from studio.report.render import LATENCY_COLUMNS, latency_rows, machine_line
from studio.timing import latency


def test_timing_warms_up_then_fills_the_budget():
    calls = []
    st = latency._timed(lambda: calls.append(1), budget_s=0.05, warmup=3, min_iters=5)
    assert len(calls) == 3 + st.iterations and st.untimed == 3 and st.iterations >= 5 and st.p50 <= st.p90 <= st.p99


def test_slow_calls_shorten_the_warm_up_not_the_minimum_iterations():
    st = latency._timed(lambda: time.sleep(0.02), budget_s=0.01, warmup=3, min_iters=5)
    assert st.untimed == latency.MIN_WARMUP and st.iterations == 5 and st.p50 >= 15


def test_iterations_are_bounded():
    st = latency._timed(lambda: None, budget_s=5.0, warmup=1, min_iters=2, max_iters=50)
    assert st.iterations == 50 and st.untimed == 1 and st.stopped == "max_iters"


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
        assert t.batch == 1 and t.threads == 1 and t.iterations >= latency.MIN_CALLS and t.warmup >= 1
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
        n, untimed = out[key].iterations, out[key].untimed
        assert 6 <= n <= 30 and untimed == 2 + 2  # the warm-up, then one untimed call per later round
        assert log.count(key) == n + untimed


def test_measure_all_times_every_file_side_by_side(report, monkeypatch):
    from studio import sources
    from studio.inputs.batch import build_batch
    from studio.inputs.sample import read_sample

    spec = ConvertSpec(checkpoint=report.source["path"], data=report.options["data"]).validated()
    loaded = sources.load(spec.checkpoint, spec)
    tensors = build_batch(read_sample(spec.data), loaded, spec.roles, spec).tensors
    path = report.options["out"] + "/model.onnx"
    moved: list[float] = []
    open_at_once: list[list[str]] = []
    real = latency._cpu_side_by_side
    monkeypatch.setattr(
        latency,
        "_cpu_side_by_side",
        lambda loaded, first, sessions, *a: open_at_once.append(list(sessions)) or real(loaded, first, sessions, *a),
    )
    got = latency.measure_all(
        loaded,
        {"model": latency.Target(path), "copy": latency.Target(path, cuda_skip="CPU only")},
        tensors,
        threads=1,
        budget_s=0.01,
        cuda=True,
        progress=moved.append,
    )
    # the progress bar moves after every round of each file at both sizes (the sample's batch, then batch 1);
    # a size whose medians are known to +-3% early jumps to its end
    assert moved == sorted(moved) and moved[-1] == pytest.approx(1.0)
    assert all(pytest.approx(f) in moved for f in (0.25, 0.5, 0.75))
    steps = [k / (4 * latency.ROUNDS) for k in range(1, 4 * latency.ROUNDS + 1)]
    assert all(any(abs(m - s) < 1e-9 for s in steps) for m in moved)
    model, copy = got["model"], got["copy"]
    assert model.torch_cpu.batch == model.ort_cpu.batch == copy.ort_cpu.batch == 5
    assert copy.batch1["ort_cpu"].batch == 1 and copy.ort_cpu.threads == 1
    # each file is timed beside its own PyTorch run (one session open at a time): two PyTorch measurements
    assert copy.torch_cpu.batch == 5 and copy.batch1["torch_cpu"].batch == 1
    assert copy.torch_attention == model.torch_attention
    assert open_at_once == [["model"], ["model"], ["copy"], ["copy"]]  # one session at a time, both sizes each
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
    batch = LATENCY_COLUMNS.index("batch")
    assert rows["ORT CPU (batch 1)"][batch] == "1x128" and rows["ORT CPU"][batch] == "8x128"
    ci, stopped = LATENCY_COLUMNS.index("p50 95% CI"), LATENCY_COLUMNS.index("stopped by")
    assert rows["ORT CPU"][ci] == "-" and rows["ORT CPU"][stopped] == "-"  # made without either: not guessed
    lat.ort_cpu = Timing(1.0, 2.0, 3.0, 40, 8, 128, 2, "x", ci95_pct=1.234, stopped="precision")
    rows = {r[0]: r for r in latency_rows(lat)}
    assert rows["ORT CPU"][ci] == "±1.2%" and rows["ORT CPU"][stopped] == "CI ≤ ±3%"
    assert rows["ORT CUDA"][-1] == "CUDAExecutionProvider + IO binding"
    line = machine_line(lat)
    assert "Test CPU" in line and "3.5 before" in line and "pessimistic" in line
    assert machine_line(LatencyInfo()) == ""


def test_median_ci_ranks_cover_95_percent_by_the_binomial_law():
    binom = pytest.importorskip("scipy.stats").binom
    for n in [6, 7, 10, 25, 60, 61, 100, 500, 2000]:
        times = list(range(n))  # the value at rank k is k
        lo, hi = latency.median_ci(times)
        k = int(lo)
        assert hi == n - 1 - k
        # the median is below lo only when at most k of the n values are: P = cdf(k), the same above hi
        assert 1 - 2 * binom.cdf(k, n, 0.5) >= 0.95
        if n <= 60:  # exact ranks: the next narrower pair would cover less than 95%
            assert 1 - 2 * binom.cdf(k + 1, n, 0.5) < 0.95
    assert latency.median_ci([1.0] * 5) is None and latency.ci_pct([1.0] * 5) is None


class FakeClock:
    """time.perf_counter for side_by_side, moved only by the callables: no real timing in the test."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def runner(self, ms_values):
        values = iter(ms_values)
        return lambda: setattr(self, "now", self.now + next(values) / 1000)


def test_stable_runtimes_stop_once_their_medians_are_known(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(latency.time, "perf_counter", clock)
    rng = np.random.default_rng(0)
    fns = {"a": clock.runner(iter(lambda: 1.0, None)), "b": clock.runner(1.0 + 0.01 * rng.random(100000))}
    done = []
    out = latency.side_by_side(fns, budget_s=6.0, rounds=6, precision=0.03, on_round=lambda d, t: done.append(d))
    assert done == [1, 6]  # two rounds were enough: the bar jumps to the end
    for st in out.values():
        assert st.stopped == "precision" and st.ci95_pct <= 3.0 and st.iterations >= latency.MIN_ITERS
    assert clock.now < 6.0 * 2 * 2 / 6 + 0.1  # two rounds of 1 s blocks for each, not the whole 12 s


def test_a_noisy_runtime_spends_the_whole_budget(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(latency.time, "perf_counter", clock)
    rng = np.random.default_rng(0)
    fns = {"steady": clock.runner(iter(lambda: 1.0, None)), "noisy": clock.runner(rng.choice([1.0, 10.0], 100000))}
    out = latency.side_by_side(fns, budget_s=0.6, rounds=6, precision=0.03)
    assert out["noisy"].stopped == out["steady"].stopped == "budget"  # runtimes stop together: ratios hold
    assert out["noisy"].ci95_pct > 3.0 and out["steady"].ci95_pct == 0.0


def test_pytorch_is_timed_with_transformers_default_attention_and_says_so(report, hf_folders):
    assert report.latency.torch_attention.startswith("sdpa attention (transformers' default; the export traced eager)")
    assert "PyTorch ran with sdpa attention" in machine_line(report.latency)
    from studio import sources

    loaded = sources.load(str(hf_folders["bert"]), ConvertSpec(checkpoint=str(hf_folders["bert"]), data="-"))
    assert loaded.module.config._attn_implementation == "eager"  # what the exporters need
    with latency.users_attention(loaded.module) as words:
        assert loaded.module.config._attn_implementation == "sdpa" and words.startswith("sdpa")
    assert loaded.module.config._attn_implementation == "eager"  # put back
    with latency.users_attention(torch.nn.Linear(2, 2)) as words:
        assert words is None  # no transformers model inside: timed as loaded, nothing claimed


def test_slow_calls_stay_near_the_budget(monkeypatch):
    """700 ms calls and a 0.6 s budget: three rounds (MIN_CALLS), not six, and no untimed call after the
    warm-up; the fast runtime beside it stops with it (ratios from the same stretch of time)."""
    clock = FakeClock()
    monkeypatch.setattr(latency.time, "perf_counter", clock)
    fns = {"slow": clock.runner(iter(lambda: 700.0, None)), "fast": clock.runner(iter(lambda: 1.0, None))}
    done = []
    out = latency.side_by_side(fns, budget_s=0.6, rounds=6, warmup=3, on_round=lambda d, t: done.append((d, t)))
    assert out["slow"].untimed == 1 and out["slow"].iterations == latency.MIN_CALLS == 3
    assert out["slow"].ci95_pct is None and out["slow"].stopped == "budget"  # too few calls for a 95% CI
    assert out["fast"].untimed == 3 + 2  # the warm-up, then one untimed call in each later round
    assert done == [(1, 6), (2, 6), (6, 6)]
    clock.now = 0.0
    out = latency.side_by_side({"slow": clock.runner(iter(lambda: 700.0, None))}, budget_s=4.2, rounds=6)
    assert out["slow"].iterations >= latency.MIN_ITERS  # a budget that fits six calls gets them


def test_a_warm_runtime_counts_its_first_slow_call_and_discards_a_fast_one(monkeypatch):
    """`warm`: runtimes that already ran these inputs (parity's session and PyTorch module). A slow first
    call is timed (its one-time costs are paid); a fast one is still a warm-up, as for the others."""
    clock = FakeClock()
    monkeypatch.setattr(latency.time, "perf_counter", clock)
    fns = {"slow": clock.runner(iter(lambda: 700.0, None)), "fast": clock.runner(iter(lambda: 1.0, None))}
    out = latency.side_by_side(fns, budget_s=0.6, rounds=6, warmup=3, warm=frozenset(fns))
    assert out["slow"].untimed == 0 and out["slow"].iterations == latency.MIN_CALLS  # 3 calls in all, not 4
    assert out["fast"].untimed == 1 + 3 + 2  # the discarded first call, the warm-up, one per later round
    clock.now = 0.0
    cold = latency.side_by_side(fns, budget_s=0.6, rounds=6, warmup=3)
    assert cold["slow"].untimed == 1 and cold["slow"].iterations == latency.MIN_CALLS


def test_a_seeded_slow_call_is_the_first_timed_call_and_spends_round_0s_block(monkeypatch):
    """`seeded`: parity's ORT call on the very session and arrays latency times. A slow one is the first of
    the MIN_CALLS timed calls (one call less to make) and its time counts as spent from round 0's block; a
    fast one only makes the runtime warm (its first call is then a warm-up, as without the seed)."""
    clock = FakeClock()
    monkeypatch.setattr(latency.time, "perf_counter", clock)
    made = []

    def slow():
        made.append(1)
        return clock.runner(iter(lambda: 700.0, None))()

    out = latency.side_by_side({"slow": slow}, budget_s=0.6, rounds=6, warmup=3, seeded={"slow": 690.0})
    assert out["slow"].iterations == latency.MIN_CALLS and len(made) == latency.MIN_CALLS - 1
    assert out["slow"].untimed == 0 and out["slow"].p50 == 700.0  # the seed is one of the three calls timed
    clock.now, made[:] = 0.0, []
    fast = latency.side_by_side({"fast": clock.runner(iter(lambda: 1.0, None))}, 0.6, 6, 3, seeded={"fast": 1.5})
    assert fast["fast"].untimed == 1 + 3 + 5  # the discarded first call, the warm-up, one per later round
    assert fast["fast"].p99 == pytest.approx(1.0)  # the seed's 1.5 ms is not among the timed calls


def test_settle_waits_for_a_spinning_thread_and_not_for_an_idle_process():
    import threading

    assert latency.settle() < 0.05  # nothing runs: one poll
    stop = threading.Event()

    def spin():  # ONNX Runtime's pool after a run: a thread burning a core for a while
        end = time.monotonic() + 0.08
        while time.monotonic() < end and not stop.is_set():
            pass

    worker = threading.Thread(target=spin)
    worker.start()
    waited = latency.settle(max_s=1.0)
    stop.set()
    worker.join()
    assert 0.05 <= waited < 0.5, waited  # until the spinning stopped, not the whole second


@pytest.mark.parametrize("variants", [(), ("optimized",)])
def test_the_checks_session_is_timed_only_without_variants(hf_folders, sample_csv, tmp_path, monkeypatch, variants):
    """Without variants, latency times model.onnx in the session the checks ran the sample on (arena on, the
    latency's threads), and PyTorch as warm; with variants, that session was dropped before they were built
    (memory) and latency opens its own, as before."""
    seen = {}
    real = latency.measure_all

    def spy(loaded, targets, tensors, **kw):
        seen["session"] = targets["model"].cpu_session
        seen["calls"] = list(targets["model"].cpu_calls)  # parity's timed call on that session
        seen["torch_warm"] = kw.get("torch_warm")
        if seen["session"] is None:
            return real(loaded, targets, tensors, **kw)
        opened = runtime.cpu_session  # latency must not open a second one (the profile stage after it opens its own)
        monkeypatch.setattr(runtime, "cpu_session", lambda *a, **k: pytest.fail("a second session for model.onnx"))
        try:
            return real(loaded, targets, tensors, **kw)
        finally:
            monkeypatch.setattr(runtime, "cpu_session", opened)

    monkeypatch.setattr(latency, "measure_all", spy)
    spec = ConvertSpec(
        checkpoint=str(hf_folders["bert"]),
        data=str(sample_csv),
        out=str(tmp_path / "o"),
        exporter="torchscript",
        latency_budget_s=0.02,
        variants=variants,
    )
    report = convert(spec)
    assert seen["torch_warm"] is True
    if variants:
        assert seen["session"] is None and seen["calls"] == []
    else:
        assert seen["session"] is not None and seen["session"].get_providers()[0] == runtime.CPU
        assert len(seen["calls"]) == 1 and seen["calls"][0] > 0
    assert report.latency.ort_cpu is not None and report.latency.ort_cpu.iterations >= latency.MIN_CALLS


def test_the_budget_is_wall_time_with_the_untimed_calls_inside_it(monkeypatch):
    """`budget_s` is what a runtime costs: the warm-up and each later round's untimed call come out of its
    blocks, so 10 ms calls in a 0.6 s budget make 60 calls in all (7 + 5 * 9 timed), not 60 timed plus 8."""
    clock = FakeClock()
    monkeypatch.setattr(latency.time, "perf_counter", clock)
    out = latency.side_by_side({"a": clock.runner(iter(lambda: 10.0, None))}, budget_s=0.6, rounds=6, warmup=3)
    assert out["a"].untimed == 3 + 5 and out["a"].iterations == 7 + 5 * 9
    assert clock.now == pytest.approx(0.6)


def test_a_variants_speedups_come_from_its_own_pair_and_through_pytorch():
    from studio.report.model import VariantInfo
    from studio.variants.table import attach_latency

    def lat(torch_ms, ort_ms):
        t = lambda ms, p: Timing(ms, ms, ms, 6, 5, 8, 1, p)  # noqa: E731
        return LatencyInfo(torch_cpu=t(torch_ms, "torch-cpu"), ort_cpu=t(ort_ms, "CPUExecutionProvider"))

    model = lat(100.0, 80.0)  # model.onnx 1.25x PyTorch in its pair
    int8 = VariantInfo(name="int8", file="variants/model.int8.onnx", ok=True)
    attach_latency([int8], {"int8": lat(110.0, 22.0)}, model)  # PyTorch ran slower beside int8: 5x in its pair
    assert int8.speedup_vs_torch == 5.0 and int8.speedup_vs_fp32 == 4.0  # 5 / 1.25, not 80 / 22 = 3.64
