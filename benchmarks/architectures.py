"""Every text architecture transformers builds for sequence classification, converted by `studio.convert`
at the default opset and at 17; prints a Markdown table (architecture, exporter used, verdicts, seconds).

    python benchmarks/architectures.py                      # the whole list (long: ~1 min per architecture)
    python benchmarks/architectures.py --types bert,gpt2    # a subset
    python benchmarks/architectures.py --json out.json      # also write every row as JSON

Each architecture is a tiny random model built from its own transformers config class with small sizes
(tests/tiny_archs.py: real model code, random weights, the written vocabulary of tests/tiny.py), saved as a
Hugging Face folder and converted on tiny.SAMPLE_CSV with the `review` column as text, no variants and a
tiny latency budget. Every architecture runs in its own child process, so one that takes the process
down is a row, not the end of the run. Outcomes:
  PASS     exported, checker, parity and shape probes pass
  FAIL     exported, a check failed (named)
  refused  a StudioError before or during export (its message: a clean refusal, CLI exit 2)
  CRASH    any other exception: a studio bug
  not built  the tiny config itself could not be built or run by transformers (not a studio verdict)
The "Tested end to end" list (docs/checkpoints.md) is taken from this table.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

ROLES = {"review": "text", "order_id": "ignore", "price": "ignore", "quantity": "ignore", "label": "ignore"}


def convert_one(model_type: str, opsets: list[int], root: Path) -> dict:
    """Build the tiny folder, convert it at each opset; a dict per opset (run inside the child)."""
    import warnings

    warnings.simplefilter("ignore")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    import tiny
    import tiny_archs

    from studio import ConvertSpec, convert
    from studio.errors import StudioError

    row: dict = {"type": model_type, "opsets": {}}
    t0 = time.perf_counter()
    try:
        folder = tiny_archs.make_folder(root / model_type, model_type)
        row["architecture"] = json.loads((folder / "config.json").read_text())["architectures"][0]
    except Exception as e:
        row["not_built"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
        return row
    row["build_s"] = round(time.perf_counter() - t0, 1)
    sample = tiny.write_sample(root / "sample.csv")
    for opset in opsets:
        t = time.perf_counter()
        res: dict = {}
        try:
            r = convert(
                ConvertSpec(
                    checkpoint=str(folder),
                    data=str(sample),
                    out=str(root / f"out{opset}"),
                    roles=ROLES,
                    opset=opset,
                    latency_budget_s=0.01,
                    cuda=False,
                )
            )
            res = {
                "outcome": "PASS" if r.ok else "FAIL",
                "exporter": r.export.exporter,
                "failed": r.failed_checks,
                "checker": r.checker.ok,
                "parity": r.parity.ok,
                "dynamic": r.dynamic.ok,
                "attempts": [
                    f"{a.exporter}: {'skipped' if a.skipped else ('ok' if a.ok else 'failed')}"
                    + (f" ({a.error[:160]})" if a.error else "")
                    for a in r.export.attempts
                ],
            }
        except StudioError as e:
            res = {"outcome": "refused", "message": str(e).splitlines()[0][:300]}
        except Exception as e:  # a studio bug: say so, loudly
            res = {"outcome": "CRASH", "message": f"{type(e).__name__}: {str(e).strip()[:300]}"}
        res["seconds"] = round(time.perf_counter() - t, 1)
        row["opsets"][str(opset)] = res
    return row


def run_child(model_type: str, opsets: list[int], timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="studio-arch-") as tmp:
        cmd = [sys.executable, __file__, "--child", model_type, "--opsets", ",".join(map(str, opsets)), "--root", tmp]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"type": model_type, "opsets": {}, "not_built": None, "timeout": timeout}
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode != 0 or not lines:
            tail = (out.stderr.strip().splitlines() or [""])[-1][:300]
            return {"type": model_type, "opsets": {}, "child_died": f"exit {out.returncode}: {tail}"}
        return json.loads(lines[-1])


def _cell(res: dict | None) -> str:
    if not res:
        return "-"
    if res["outcome"] in ("PASS", "FAIL"):
        what = res["outcome"] + ("" if res["outcome"] == "PASS" else " (" + ", ".join(res["failed"]) + ")")
        return f"{what}, {res['exporter']}, {res['seconds']:.0f} s"
    message = re.sub(r"\x1b\[[0-9;]*m", "", res.get("message", ""))  # terminal colours in torch's words
    return f"{res['outcome']}: {message[:140]}, {res['seconds']:.0f} s"


def table(rows: list[dict], opsets: list[int]) -> str:
    head = "| model type | architecture | " + " | ".join(f"opset {o}" for o in opsets) + " |"
    lines = [head, "|" + "---|" * (2 + len(opsets))]
    for r in rows:
        if r.get("not_built") or r.get("child_died") or r.get("timeout"):
            why = r.get("not_built") or r.get("child_died") or f"timed out after {r['timeout']:.0f} s"
            label = "not built" if r.get("not_built") else ("timeout" if r.get("timeout") else "CRASH (child died)")
            lines.append(f"| {r['type']} | - | {label}: {why[:160]} |" + " |" * (len(opsets) - 1))
            continue
        cells = [_cell(r["opsets"].get(str(o))).replace("|", "\\|") for o in opsets]
        lines.append(f"| {r['type']} | {r.get('architecture', '-')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows: list[dict], opsets: list[int]) -> str:
    built = [r for r in rows if r.get("opsets")]
    parts = [f"{len(rows)} model types, {len(built)} built as tiny models"]
    for o in opsets:
        outs = [r["opsets"].get(str(o), {}).get("outcome") for r in built]
        counts = {k: outs.count(k) for k in ("PASS", "FAIL", "refused", "CRASH") if outs.count(k)}
        parts.append(f"opset {o}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return "; ".join(parts) + "."


def main(argv: list[str] | None = None) -> int:
    from studio.spec import OPSET_DEFAULT

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", help="comma-separated model types (default: every sequence-classification one)")
    ap.add_argument("--opsets", default=f"{OPSET_DEFAULT},17")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per architecture (both opsets)")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    opsets = [int(x) for x in a.opsets.split(",")]
    if a.child:
        print(json.dumps(convert_one(a.child, opsets, Path(a.root))))
        return 0
    import tiny_archs

    types = a.types.split(",") if a.types else tiny_archs.sequence_classification_types()
    rows = []
    for t in types:
        row = run_child(t, opsets, a.timeout)
        rows.append(row)
        print(table([row], opsets).splitlines()[-1], file=sys.stderr, flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=1))
    print(table(rows, opsets))
    print()
    print(summary(rows, opsets))
    crashed = [
        r["type"]
        for r in rows
        if r.get("child_died") or any(v["outcome"] == "CRASH" for v in r.get("opsets", {}).values())
    ]
    return 1 if crashed else 0


if __name__ == "__main__":
    raise SystemExit(main())
