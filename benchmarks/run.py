"""Benchmark `studio convert` and the artifacts it makes, side by side in one run; print a table, write JSON.

    python benchmarks/run.py                        # bert-base + the demo model, 2 threads
    python benchmarks/run.py --sizes big            # the optional > 2 GB model (needs ~10 GB of disk)
    python benchmarks/run.py --optimum-cli /path/to/optimum-cli   # compare with optimum's exporter

For each model, `studio convert` runs as a child process (as a user would run it) with
`--variants optimized,int8`; the benchmark reads its progress lines from stderr and, at each stage,
the child's peak RSS so far (VmHWM in /proc), so the export + validate part (loading, export, checker,
parity, shape probes) and the whole run (+ latency, + variants) are both measured; the final peak is
the kernel's ru_maxrss for that child (os.wait4). Latencies come from the conversion's own report.json:
PyTorch eager and every ONNX artifact timed in the same process, same threads, same inputs (warm-up,
then a time budget, p50 / p90 / p99). Where `optimum-cli` is installed (or given), its
`export onnx` (which also validates) runs on the same folder with the same measurements; otherwise
that comparison is skipped and the table says so. Not a unit test: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
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
    "peak_rss_gb": 1.5,
    "ort_vs_torch": 1.2,
    "int8_vs_torch": 4.0,
    "int8_agreement": 0.99,
    "big_peak_vs_weights": 2.5,
}
# export + validate (loading, export, checker, parity, shape probes) ends where the next stage starts:
# "variants" when variants are built, else "latency"
VALIDATE_END = ("variants", "latency")


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
            rss = _rss_bytes(proc.pid)
            if rss:
                peak_polled[0] = max(peak_polled[0], rss)
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
    return {
        "cmd": cmd,
        "rc": proc.returncode,
        "wall_s": round(time.perf_counter() - t0, 2),
        "peak_rss_bytes": (usage.ru_maxrss * 1024) if usage else peak_polled[0],
        "peak_rss_polled_bytes": peak_polled[0],
        "stages": stages,
        "stdout": "".join(out_chunks),
        "stderr_tail": "".join(err_lines[-40:]),
    }


def _stage(run: dict, *names: str) -> dict | None:
    """The first progress line naming one of `names`."""
    return next((s for s in run["stages"] if s["stage"] in names), None)


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
        "--threads",
        str(args.threads),
        "--latency-budget",
        str(args.budget),
    ] + extra


def studio_convert(checkpoint: Path, sample: Path, out: Path, args, extra: list[str]) -> dict:
    cmd = _convert_cmd(checkpoint, sample, out, args, extra + ["--json"])
    if args.variants:
        cmd += ["--variants", args.variants]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    run = monitored(cmd, env=env)
    report = None
    if (out / "report.json").exists():
        report = json.loads((out / "report.json").read_text())
    if run["rc"] not in (0, 1) or report is None:
        raise SystemExit(f"studio convert failed (exit {run['rc']}):\n{run['stderr_tail']}")
    validate = _stage(run, *VALIDATE_END)
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
    run = monitored(cmd, env=dict(os.environ, PYTHONUNBUFFERED="1"), stop_at=VALIDATE_END[-1])
    for leftover in out.parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    validate = _stage(run, *VALIDATE_END)
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


def optimum_export(folder: Path, out: Path, exe: str | None) -> dict:
    if not exe:
        return {"skipped": "optimum-cli is not installed here (pip install optimum-onnx); comparison skipped"}
    shutil.rmtree(out, ignore_errors=True)
    run = monitored([exe, "export", "onnx", "--model", str(folder), "--task", "text-classification", str(out)])
    run.pop("stdout")
    if run["rc"] != 0:
        return {"skipped": f"optimum-cli failed (exit {run['rc']}): {run['stderr_tail'][-600:]}", "run": run}
    return {"run": run, "wall_s": run["wall_s"], "peak_rss_bytes": run["peak_rss_bytes"]}


def summarize(
    name: str, desc: str, conv: dict, optimum: dict | None, weights: int, torchscript: dict | None = None
) -> dict:
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
    if optimum and "wall_s" in optimum:
        checks.update(
            {
                "optimum_wall_s": optimum["wall_s"],
                "studio_export_validate_s": conv["export_validate_s"],
                "optimum_peak_rss_gb": _gb(optimum["peak_rss_bytes"]),
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
        "optimum": optimum,
        "torchscript": torchscript,
        "machine_during_latency": lat.get("machine"),
    }


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
        f"### {result['model']}: {result['description']}",
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
    opt = result.get("optimum") or {}
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
        f"| studio convert: whole run (+ variants, latency, writing) | {_f(conv['total_s'], '.1f')} | {_f(conv['total_peak_gb'], '.2f')} | |",
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
    if "wall_s" in opt:
        lines.append(
            f"| optimum-cli export onnx (export + validate) | {_f(opt['wall_s'], '.1f')} | "
            f"{_f(_gb(opt['peak_rss_bytes']), '.2f')} | studio wall <= optimum: "
            f"{_met(conv['export_validate_s'], opt['wall_s'], lower=True)} |"
        )
    else:
        lines.append(f"| optimum-cli export onnx | - | - | {opt.get('skipped', 'n/a')} |")
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="bert-base,demo", help="comma list of: bert-base, demo, big")
    p.add_argument(
        "--work",
        default=os.environ.get("STUDIO_BENCH_DIR", str(Path.home() / ".cache" / "onnx-studio-bench")),
        help="where models, samples and outputs are kept (models are cached)",
    )
    p.add_argument("--threads", type=int, default=2, help="intra-op threads, PyTorch and ORT alike (default 2)")
    p.add_argument("--budget", type=float, default=2.0, help="seconds per latency measurement (default 2.0)")
    p.add_argument("--variants", default="optimized,int8", help="variants to build and time (default optimized,int8)")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--optimum-cli", default="auto", help="path to optimum-cli, 'auto' (PATH) or 'none'")
    p.add_argument(
        "--torchscript",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time export + validate with --exporter torchscript (default on; HF models only)",
    )
    p.add_argument("--json", default=None, help="write results here (default <work>/results.json)")
    args = p.parse_args(argv)
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
        "threads": args.threads,
        "budget_s": args.budget,
    }
    results = []
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        print(f"== {size}: preparing", file=sys.stderr, flush=True)
        if size == "demo":
            ckpt, sample = REPO / "studio" / "demo" / "demo_model.pt", REPO / "studio" / "demo" / "sample.csv"
            if not ckpt.exists():
                print(f"   skipped: {ckpt} is missing", file=sys.stderr)
                continue
            weights, desc, extra, optimum = (
                ckpt.stat().st_size,
                "the demo model (studio/demo, multimodal text + tabular)",
                [],
                {"skipped": "optimum-cli has no exporter for this custom architecture"},
            )
        else:
            ckpt = models.make_bert(work / size, size)
            sample = models.make_sample(work / f"{size}-sample-{args.rows}x{args.tokens}.csv", args.rows, args.tokens)
            weights, desc = models.weights_bytes(ckpt), models.describe(size)
            extra = ["--role", "order_id=ignore", "--role", "label=ignore", "--max-length", str(args.tokens)]
            optimum = None
        print(f"== {size}: studio convert", file=sys.stderr, flush=True)
        conv = studio_convert(ckpt, sample, work / f"out-{size}", args, extra)
        torchscript = None
        if optimum is None:
            print(f"== {size}: optimum-cli export onnx", file=sys.stderr, flush=True)
            optimum = optimum_export(ckpt, work / f"optimum-{size}", exe)
            if args.torchscript:
                print(
                    f"== {size}: studio convert --exporter torchscript (export + validate)", file=sys.stderr, flush=True
                )
                torchscript = studio_torchscript(ckpt, sample, work / f"out-{size}-torchscript", args, extra)
        res = summarize(size, desc, conv, optimum, weights, torchscript)
        results.append(res)
        print(table(res) + "\n", flush=True)
    header["load_avg_end"] = _load()
    header["seconds"] = round(time.time() - started, 1)
    out = Path(args.json) if args.json else work / "results.json"
    out.write_text(json.dumps({"machine": header, "results": results}, indent=2))
    print(
        f"machine: {header['cpu']}, {header['logical_cpus']} logical CPUs, {header['memory_gb']} GB; "
        f"load average {header['load_avg_start']} at start, {header['load_avg_end']} at end; "
        f"{header['seconds']} s. JSON: {out}"
    )
    return 0


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
