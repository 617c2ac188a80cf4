"""Generators (issue 27 §5-6): the architecture matrix, and the studio against optimum-cli on decoders.

    python benchmarks/generation.py --matrix                      # (a) 23 families at opset 18 and 17: verdicts
    python benchmarks/generation.py --matrix --types gpt2,t5 --opsets 18
    python benchmarks/generation.py --compare small --optimum-cli /tmp/optvenv/bin/optimum-cli   # (b) (c) (d)
    python benchmarks/generation.py --compare small,1b --repeats 1 --work /tmp/genbench

(a) `--matrix`: every family of tests/tiny_lm_archs.py (tiny random model from transformers' own config class,
its local tokenizer) converted by `studio.convert` (task detected, the cache, 3 prompts, 4 new tokens, tiny
latency budget) in a child process per family, at each opset. Outcomes: PASS (checker, parity, generation one by
one and batched == transformers' generate, probes), FAIL (the failed checks named), refused (a StudioError: its
message), CRASH (any other exception), not built (transformers itself could not build the tiny model).

(b) `--compare`: the studio's whole default run (`python -m studio convert FOLDER --data prompts.csv --out OUT`:
export with the cache, checker, parity, generation check, probes, tokens/s, writing) against
`optimum-cli export onnx --task text-generation-with-past` (its export + validation) on the same folder, each a
child process: wall time and peak RSS of the process tree (benchmarks/run.py's `monitored`), paired, the order
alternating. Target: studio <= 1.5x optimum. For the 1b model also: the studio's peak RSS <= 2.5x the weights,
external data written, generation verified on the two prompts (report.json).
(c) the studio's model.onnx against optimum's, decoded by the same greedy loop (tests/tiny_lm_archs.ort_greedy,
batch 1, no EOS stop, 2 threads) in one process, rounds alternating; tokens/s (prompt forward included) and
time to first token, median of the rounds; both files' tokens compared. Target: studio >= optimum.
(d) small only, in that process: ORT (the studio's file, that loop) against PyTorch eager (transformers'
`generate`, its cache, default attention, min_new_tokens = max_new_tokens) at batch 1. Target: >= 1.5x.

Models (random weights, built once into --work): `small` = GPT-2 small's shape (12 layers x 768, 12 heads,
vocab 50257: 124M parameters); `1b` = a Llama-style decoder (hidden 2048, 20 layers, 32 heads / 8 kv heads,
intermediate 5632, vocab 32000: 1.03B parameters, 4.1 GB fp32). Their tokenizer is a word-level one over
tests/tiny.py's words padded to the vocabulary; the prompts are sentences of those words. Not a unit test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

TARGETS = {"whole_vs_optimum": 1.5, "peak_vs_weights": 2.5, "file_vs_optimum": 1.0, "ort_vs_torch": 1.5}
PROMPTS = [
    "the product arrived late and the box was damaged",
    "great quality and fast i would buy again",
    "it never works and i want a refund",
    "good price for the quality",
    "terrible product it arrived broken",
]
SIZES = {
    "small": dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257, prompts=5),
    "1b": dict(
        model_type="llama",
        hidden_size=2048,
        num_hidden_layers=20,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=5632,
        max_position_embeddings=2048,
        vocab_size=32000,
        prompts=2,
    ),
}


# ----------------------------------------------------------------------------------------------- (a) the matrix
def matrix_child(family: str, opsets: list[int], root: Path) -> dict:
    """Build the tiny folder, convert it at each opset through studio.convert (run inside the child)."""
    import warnings

    warnings.simplefilter("ignore")
    import pandas as pd
    import tiny_lm_archs as T
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    from studio import ConvertSpec, convert
    from studio.errors import StudioError

    row: dict = {"type": family, "opsets": {}}
    try:
        folder = T.make_folder(root / family, family)
    except T.NotBuilt as e:
        row["not_built"] = str(e)
        return row
    row["architecture"] = json.loads((folder / "config.json").read_text())["architectures"][0]
    sample = root / "prompts.csv"
    pd.DataFrame({"prompt": T.PROMPTS[:3]}).to_csv(sample, index=False)
    for opset in opsets:
        t = time.perf_counter()
        try:
            r = convert(
                ConvertSpec(
                    checkpoint=str(folder),
                    data=str(sample),
                    out=str(root / f"out{opset}"),
                    opset=opset,
                    max_new_tokens=4,
                    latency_budget_s=0.01,
                    cuda=False,
                )
            )
            g = r.generation
            res = {
                "outcome": "PASS" if r.ok else "FAIL",
                "failed": r.failed_checks,
                "task": g.task if g else None,
                "files": sorted((g.files if g else r.files).values()),
                "cache": g.cache if g else None,
                "runs": [
                    {"mode": x.mode, "ok": x.ok, "same": sum(p.same for p in x.prompts), "n": len(x.prompts)}
                    for x in (g.runs if g else [])
                ],
                "probes_ok": all(p.get("ok") for p in g.probes) if g else None,
                "error": g.error if g else None,
            }
        except StudioError as e:
            res = {"outcome": "refused", "message": str(e).splitlines()[0][:300]}
        except Exception as e:  # a studio bug: say so, loudly
            res = {"outcome": "CRASH", "message": f"{type(e).__name__}: {str(e).strip()[:300]}"}
        res["seconds"] = round(time.perf_counter() - t, 1)
        row["opsets"][str(opset)] = res
    return row


def run_matrix_child(family: str, opsets: list[int], timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="studio-gen-") as tmp:
        cmd = [
            sys.executable,
            __file__,
            "--matrix-child",
            family,
            "--opsets",
            ",".join(map(str, opsets)),
            "--root",
            tmp,
        ]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"type": family, "opsets": {}, "timeout": timeout}
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode != 0 or not lines:
            tail = (out.stderr.strip().splitlines() or [""])[-1][:300]
            return {"type": family, "opsets": {}, "child_died": f"exit {out.returncode}: {tail}"}
        return json.loads(lines[-1])


def _cell(res: dict | None) -> str:
    """PASS (one by one same/n + batched same/n), seconds; FAIL (the failed checks); refused / CRASH: message."""
    if not res:
        return "-"
    if res["outcome"] in ("PASS", "FAIL"):
        runs = " + ".join(f"{x['same']}/{x['n']}" for x in res.get("runs", []))
        what = "PASS" if res["outcome"] == "PASS" else "FAIL: " + ", ".join(res["failed"]) + ";"
        extra = f"; {res['error'][:120]}" if res.get("error") else ""
        return f"{what} ({runs}){extra}, {res['seconds']:.0f} s"
    message = re.sub(r"\x1b\[[0-9;]*m", "", res.get("message", ""))
    return f"{res['outcome']}: {message[:160]}, {res['seconds']:.0f} s"


def _cache_cell(row: dict) -> str:
    res = next((v for v in row["opsets"].values() if v.get("cache")), None)
    if not res:
        return "-"
    c = res["cache"]
    return f"{c.get('layers')} x {c.get('kv_heads')} x {c.get('head_dim')}"


def matrix_table(rows: list[dict], opsets: list[int]) -> str:
    head = "| family | architecture | files | cache: layers x kv heads x head dim | "
    head += " | ".join(f"opset {o}" for o in opsets) + " |"
    lines = [head, "|" + "---|" * (4 + len(opsets))]
    for r in rows:
        if r.get("not_built") or r.get("child_died") or r.get("timeout"):
            why = r.get("not_built") or r.get("child_died") or f"timed out after {r['timeout']:.0f} s"
            label = "not built" if r.get("not_built") else ("timeout" if r.get("timeout") else "CRASH (child died)")
            lines.append(f"| {r['type']} | - | - | - | {label}: {why[:160]} |" + " |" * (len(opsets) - 1))
            continue
        first = next(iter(r["opsets"].values()), {})
        files = " + ".join(f.removesuffix(".onnx") for f in first.get("files") or []) or "-"
        cells = [_cell(r["opsets"].get(str(o))).replace("|", "\\|") for o in opsets]
        lines.append(
            f"| {r['type']} | {r.get('architecture', '-')} | {files} | {_cache_cell(r)} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def matrix_summary(rows: list[dict], opsets: list[int]) -> str:
    built = [r for r in rows if r.get("opsets")]
    parts = [f"{len(rows)} families, {len(built)} built as tiny models"]
    for o in opsets:
        outs = [r["opsets"].get(str(o), {}).get("outcome") for r in built]
        counts = {k: outs.count(k) for k in ("PASS", "FAIL", "refused", "CRASH") if outs.count(k)}
        parts.append(f"opset {o}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return "; ".join(parts) + "."


def matrix(args) -> int:
    import tiny_lm_archs as T

    opsets = [int(x) for x in args.opsets.split(",")]
    families = args.types.split(",") if args.types else T.FAMILIES
    rows = []
    for f in families:
        row = run_matrix_child(f, opsets, args.timeout)
        rows.append(row)
        print(matrix_table([row], opsets).splitlines()[-1], file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    print(matrix_table(rows, opsets) + "\n\n" + matrix_summary(rows, opsets))
    print("PASS (a + b): tokens == transformers' generate for a of the prompts one by one, b batched with padding;")
    print("checker, first-step parity and the shape probes passed too (report.ok).")
    return (
        1 if any(r.get("child_died") or any(v["outcome"] == "CRASH" for v in r["opsets"].values()) for r in rows) else 0
    )


# ------------------------------------------------------------------------------------ (b) studio vs optimum-cli
def word_tokenizer(vocab_size: int):
    """A word-level fast tokenizer over tests/tiny.py's words, padded with w<i> entries to `vocab_size`."""
    import tiny
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = tiny.SPECIALS + [w for w in tiny.WORDS if w not in tiny.SPECIALS]
    words += [f"w{i}" for i in range(vocab_size - len(words))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[CLS]", eos_token="[SEP]"
    )


def build_folder(size: str, folder: Path) -> dict:
    """The size's random-weight model + tokenizer as a Hugging Face folder (kept between runs)."""
    done = folder / "built.json"
    if done.exists():
        return json.loads(done.read_text())
    import torch
    import transformers as tf

    spec = dict(SIZES[size])
    spec.pop("prompts")
    model_type = spec.pop("model_type")
    config = tf.AutoConfig.for_model(model_type, pad_token_id=0, bos_token_id=2, eos_token_id=3, **spec)
    torch.manual_seed(0)
    with torch.no_grad():
        model = tf.AutoModelForCausalLM.from_config(config).eval()
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(folder))
    word_tokenizer(config.vocab_size).save_pretrained(str(folder))
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    info = {"size": size, "model_type": model_type, "parameters": params, "weights_bytes": weights}
    done.write_text(json.dumps(info))
    return info


def _rss_note(run: dict) -> str:
    return f"{run['peak_rss_bytes'] / 1e9:.2f} GB"


def studio_run(folder: Path, sample: Path, out: Path) -> dict:
    from run import monitored

    cmd = [sys.executable, "-m", "studio", "convert", str(folder), "--data", str(sample), "--out", str(out), "--json"]
    run = monitored(cmd, env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO)), timeout=3600)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    run.pop("stdout", None)
    return {"run": run, "report": report}


def optimum_run(exe: str, folder: Path, out: Path) -> dict:
    import shutil

    from run import monitored

    shutil.rmtree(out, ignore_errors=True)
    run = monitored([exe, "export", "onnx", "--model", str(folder), "--task", "text-generation-with-past", str(out)])
    run.pop("stdout", None)
    return {"run": run}


def speed_child(
    studio_file: Path, optimum_file: Path | None, folder: Path, tokens: int, rounds: int, torch_too: bool
) -> dict:
    """(c) and (d) in one process: both files (and PyTorch) decode the same prompt with the same loop."""
    import numpy as np
    import onnxruntime as ort
    import tiny_lm_archs as T
    import torch
    import transformers as tf

    threads = 2
    tok = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    ids = tok(PROMPTS[0])["input_ids"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    engines = {"studio": ort.InferenceSession(str(studio_file), opts, providers=["CPUExecutionProvider"])}
    if optimum_file is not None:
        engines["optimum"] = ort.InferenceSession(str(optimum_file), opts, providers=["CPUExecutionProvider"])
    out: dict = {"threads": threads, "tokens": tokens, "prompt_tokens": len(ids), "engines": {}}
    for name, sess in engines.items():
        out["engines"][name] = {"providers": sess.get_providers(), "tps": [], "ttft": []}
    model = None
    if torch_too:
        torch.set_num_threads(threads)
        model = tf.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
        out["engines"]["torch"] = {
            "providers": ["torch-cpu"],
            "tps": [],
            "ttft": [],
            "attention": model.config._attn_implementation,
        }
    for name, sess in engines.items():  # warm-up, and the tokens each file decodes
        new, _, _ = T.ort_greedy(sess, ids, tokens, eos=None)
        out["engines"][name]["ids"] = new
    if model is not None:
        with torch.no_grad():
            seq = model.generate(torch.tensor([ids]), max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        out["engines"]["torch"]["ids"] = seq[0, len(ids) :].tolist()
    for k in range(rounds):
        order = list(engines) if k % 2 == 0 else list(engines)[::-1]
        for name in order:
            _, seconds, first = T.ort_greedy(engines[name], ids, tokens, eos=None)
            out["engines"][name]["tps"].append(tokens / seconds)
            out["engines"][name]["ttft"].append(first)
        if model is not None:
            with torch.no_grad():
                t0 = time.perf_counter()
                model.generate(torch.tensor([ids]), max_new_tokens=1, min_new_tokens=1, do_sample=False)
                first = time.perf_counter() - t0
                t0 = time.perf_counter()
                model.generate(torch.tensor([ids]), max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
                seconds = time.perf_counter() - t0
            out["engines"]["torch"]["tps"].append(tokens / seconds)
            out["engines"]["torch"]["ttft"].append(first)
    for e in out["engines"].values():
        e["tokens_per_s"] = round(statistics.median(e["tps"]), 2)
        e["ttft_ms"] = round(1000 * statistics.median(e["ttft"]), 1)
    np.random.seed(0)
    return out


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def compare_size(size: str, args, exe: str | None) -> dict:
    work = Path(args.work)
    folder = work / f"gen-{size}"
    print(f"== {size}: building the folder", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, __file__, "--build-child", size, "--root", str(folder)], check=True)
    info = json.loads((folder / "built.json").read_text())
    sample = work / f"gen-{size}-prompts.csv"
    sample.write_text("prompt\n" + "\n".join(PROMPTS[: SIZES[size]["prompts"]]) + "\n")
    pairs = []
    for k in range(args.repeats):
        order = ["studio", "optimum"] if (k + (args.first == "optimum")) % 2 == 0 else ["optimum", "studio"]
        pair: dict = {"order": order, "load_before": _load()}
        for who in order:
            print(f"== {size}: pair {k + 1}/{args.repeats}: {who}", file=sys.stderr, flush=True)
            if who == "studio":
                pair["studio"] = studio_run(folder, sample, work / f"gen-{size}-studio")
            elif exe:
                pair["optimum"] = optimum_run(exe, folder, work / f"gen-{size}-optimum")
        pair["load_after"] = _load()
        pairs.append(pair)
    optimum_file = work / f"gen-{size}-optimum" / "model.onnx"
    has_optimum = (
        bool(exe) and optimum_file.exists() and all(p["optimum"]["run"]["rc"] == 0 for p in pairs if "optimum" in p)
    )
    print(f"== {size}: tokens/s, one process", file=sys.stderr, flush=True)
    cmd = [sys.executable, __file__, "--speed-child", size, "--root", str(work)]
    cmd += ["--tokens", str(args.tokens), "--rounds", str(args.rounds)] + ([] if has_optimum else ["--no-optimum"])
    sp = subprocess.run(cmd, capture_output=True, text=True)
    speed = json.loads(sp.stdout.strip().splitlines()[-1]) if sp.returncode == 0 else {"error": sp.stderr[-800:]}
    return {"size": size, "info": info, "pairs": pairs, "speed": speed, "optimum": has_optimum}


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _fmt(x, f=".1f", suffix=""):
    return "-" if x is None else f"{x:{f}}{suffix}"


def _met(value, target, lower=True):
    if value is None:
        return "-"
    return "met" if (value <= target if lower else value >= target) else "MISSED"


def compare_table(res: dict) -> str:
    size, info, pairs = res["size"], res["info"], res["pairs"]
    # a studio run that did not finish its checks (exit 2 or a signal: no report) is listed, not counted
    st = [p["studio"] for p in pairs if "studio" in p and p["studio"]["run"]["rc"] in (0, 1) and p["studio"]["report"]]
    op = [p["optimum"] for p in pairs if "optimum" in p and p["optimum"]["run"]["rc"] == 0]
    s_wall, s_peak = _med(s["run"]["wall_s"] for s in st), _med(s["run"]["peak_rss_bytes"] for s in st)
    o_wall = _med(o["run"]["wall_s"] for o in op) if op else None
    o_peak = _med(o["run"]["peak_rss_bytes"] for o in op) if op else None
    ratio = s_wall / o_wall if s_wall and o_wall else None
    weights = info["weights_bytes"]
    rep = st[-1]["report"] if st else None
    gen = (rep or {}).get("generation") or {}
    runs = ", ".join(
        f"{r['mode']}: {sum(p.get('same', False) for p in r.get('prompts', []))}/{len(r.get('prompts', []))} prompts same"
        for r in gen.get("runs", [])
    )
    external = (rep or {}).get("export", {}).get("external_data")
    lines = [
        f"### {size}: {info['model_type']}, {info['parameters'] / 1e6:,.0f}M parameters, {weights / 1e9:.2f} GB of weights",
        "",
        f"studio convert (defaults: cache, {SIZES[size]['prompts']} prompts, 20 new tokens, checks, tokens/s) vs "
        f"`optimum-cli export onnx --task text-generation-with-past`, median of {len(pairs)} paired run(s); peak RSS of the process tree",
        "",
        "| measure | studio | optimum-cli | ratio | target | verdict |",
        "|---|---|---|---|---|---|",
        f"| whole run, s | {_fmt(s_wall)} | {_fmt(o_wall) if res['optimum'] else 'not run'} | {_fmt(ratio, '.2f', 'x')} | "
        f"<= {TARGETS['whole_vs_optimum']}x | {_met(ratio, TARGETS['whole_vs_optimum'])} |",
        f"| peak RSS, GB | {_fmt(s_peak and s_peak / 1e9, '.2f')} | {_fmt(o_peak and o_peak / 1e9, '.2f')} | "
        f"{_fmt(s_peak / o_peak if s_peak and o_peak else None, '.2f', 'x')} | | |",
        f"| studio peak / weights | {_fmt(s_peak / weights if s_peak else None, '.2f', 'x')} | "
        f"{_fmt(o_peak / weights if o_peak else None, '.2f', 'x')} | | "
        + (
            f"<= {TARGETS['peak_vs_weights']}x | {_met(s_peak / weights if s_peak else None, TARGETS['peak_vs_weights'])} |"
            if size == "1b"
            else "| |"
        ),
        f"| studio verdict | {'PASS' if rep and rep.get('ok') else 'FAIL ' + str((rep or {}).get('failed_checks'))}: {runs or 'no generation'}; "
        f"external data: {external} | | | | |",
        "",
        "| pair | order | studio s | studio peak GB | studio exit | optimum s | optimum peak GB | optimum exit | ratio | load before -> after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    failed: list[str] = []
    for k, p in enumerate(pairs, 1):
        s, o = p.get("studio", {}).get("run", {}), p.get("optimum", {}).get("run", {})
        r = s.get("wall_s") / o["wall_s"] if s.get("wall_s") and o.get("wall_s") and o.get("rc") == 0 else None
        if s.get("rc") not in (0, 1, None):
            r = None  # not counted: its last line is below the table
            failed.append(
                f"pair {k}: studio exit {s.get('rc')}: {(s.get('stderr_tail') or '').strip().splitlines()[-1:]}"
            )
        lines.append(
            f"| {k} | {' then '.join(p['order'])} | {_fmt(s.get('wall_s'))} | {_fmt(s.get('peak_rss_bytes', 0) / 1e9, '.2f')} | "
            f"{s.get('rc')} | {_fmt(o.get('wall_s'))} | {_fmt(o.get('peak_rss_bytes', 0) / 1e9 if o else None, '.2f')} | {o.get('rc')} | "
            f"{_fmt(r, '.2f', 'x')} | {p['load_before']} -> {p['load_after']} |"
        )
    lines += [""] + failed if failed else []
    timings = (rep or {}).get("timings", {}).get("stages")
    if timings:
        lines += [
            "",
            "studio stages (report.json timings of the last run), s: "
            + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()),
        ]
    sp = res["speed"]
    if "engines" in sp:
        e = sp["engines"]
        lines += [
            "",
            f"decoding in one process, the same greedy loop, batch 1, prompt of {sp['prompt_tokens']} tokens + {sp['tokens']} new tokens, "
            f"{sp['threads']} threads, median of {len(e['studio']['tps'])} rounds:",
            "",
            "| engine | providers | tokens/s | TTFT ms | vs optimum's file | vs PyTorch | tokens == studio's file |",
            "|---|---|---|---|---|---|---|",
        ]
        base_o = e.get("optimum", {}).get("tokens_per_s")
        base_t = e.get("torch", {}).get("tokens_per_s")
        for name, v in e.items():
            label = {
                "studio": "ORT, the studio's model.onnx",
                "optimum": "ORT, optimum's model.onnx",
                "torch": f"PyTorch eager generate ({v.get('attention')})",
            }[name]
            lines.append(
                f"| {label} | {', '.join(v['providers'])} | {v['tokens_per_s']:.1f} | {v['ttft_ms']:.0f} | "
                f"{_fmt(v['tokens_per_s'] / base_o if base_o else None, '.2f', 'x')} | {_fmt(v['tokens_per_s'] / base_t if base_t else None, '.2f', 'x')} | "
                f"{v.get('ids') == e['studio'].get('ids')} |"
            )
        so = e["studio"]["tokens_per_s"] / base_o if base_o else None
        lines.append("")
        lines.append(
            f"targets: studio's file vs optimum's {_fmt(so, '.2f', 'x')} (>= 1.0x: {_met(so, 1.0, lower=False)})"
        )
        if base_t:
            st_ = e["studio"]["tokens_per_s"] / base_t
            lines[-1] += (
                f"; ORT vs PyTorch eager {st_:.2f}x (>= {TARGETS['ort_vs_torch']}x: {_met(st_, TARGETS['ort_vs_torch'], lower=False)})"
            )
    else:
        lines += ["", f"tokens/s: not measured ({sp.get('error', '')[-400:]})"]
    return "\n".join(lines)


def _machine() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    mem = (
        int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1])
        / 1024**2
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    import onnxruntime
    import torch
    import transformers

    return (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu}, {os.cpu_count()} logical CPUs, {mem:.1f} GB; "
        f"studio at {commit}, torch {torch.__version__}, transformers {transformers.__version__}, onnxruntime {onnxruntime.__version__}"
    )


def compare(args) -> int:
    import shutil

    exe = (
        None
        if args.optimum_cli == "none"
        else (shutil.which("optimum-cli") if args.optimum_cli == "auto" else args.optimum_cli)
    )
    Path(args.work).mkdir(parents=True, exist_ok=True)
    print(_machine() + f"; load average {_load()} at start\n", flush=True)
    results = []
    for size in [s.strip() for s in args.compare.split(",") if s.strip()]:
        if size not in SIZES:
            raise SystemExit(f"unknown size {size!r}: use {', '.join(SIZES)}")
        res = compare_size(size, args, exe)
        results.append(res)
        print(compare_table(res) + "\n", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print(f"load average {_load()} at end; optimum-cli: {exe or 'not given'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--matrix", action="store_true", help="(a) the architecture matrix")
    ap.add_argument("--types", help="matrix: comma-separated families (default: all 23 of tests/tiny_lm_archs.py)")
    ap.add_argument("--opsets", default="18,17", help="matrix: opsets (default 18,17)")
    ap.add_argument("--timeout", type=float, default=900, help="matrix: seconds per family (all opsets)")
    ap.add_argument("--compare", help="(b)-(d): comma list of sizes: small, 1b")
    ap.add_argument(
        "--optimum-cli",
        default=os.environ.get("STUDIO_BENCH_OPTIMUM_CLI", "auto"),
        help="path, 'auto' (PATH) or 'none'",
    )
    ap.add_argument("--repeats", type=int, default=1, help="compare: paired runs per size (default 1)")
    ap.add_argument(
        "--first", choices=("studio", "optimum"), default="studio", help="compare: who runs first in pair 1"
    )
    ap.add_argument("--tokens", type=int, default=32, help="compare: new tokens per timed decode (default 32)")
    ap.add_argument("--rounds", type=int, default=5, help="compare: timed decodes per engine (default 5)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "studio-genbench"), help="models and outputs")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--from-json", help="print the tables of an earlier run's --json (matrix or compare)")
    ap.add_argument("--matrix-child", help=argparse.SUPPRESS)
    ap.add_argument("--build-child", help=argparse.SUPPRESS)
    ap.add_argument("--speed-child", help=argparse.SUPPRESS)
    ap.add_argument("--no-optimum", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.matrix_child:
        print(json.dumps(matrix_child(a.matrix_child, [int(x) for x in a.opsets.split(",")], Path(a.root))))
        return 0
    if a.build_child:
        print(json.dumps(build_folder(a.build_child, Path(a.root))))
        return 0
    if a.speed_child:
        work = Path(a.root)
        size = a.speed_child
        optimum_file = None if a.no_optimum else work / f"gen-{size}-optimum" / "model.onnx"
        res = speed_child(
            work / f"gen-{size}-studio" / "model.onnx",
            optimum_file,
            work / f"gen-{size}",
            a.tokens,
            a.rounds,
            size == "small",
        )
        print(json.dumps(res))
        return 0
    if a.from_json:  # the tables again from a run's --json
        got = json.loads(Path(a.from_json).read_text())
        if got and "opsets" in got[0]:
            opsets = [int(x) for x in a.opsets.split(",")]
            print(matrix_table(got, opsets) + "\n\n" + matrix_summary(got, opsets))
        for res in [g for g in got if "pairs" in g]:
            print(compare_table(res) + "\n")
        return 0
    if a.matrix:
        return matrix(a)
    if a.compare:
        return compare(a)
    ap.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
