"""Dynamic int8 against static int8 (and any other variant) on bert-base, in one conversion: verdicts, size and
speed from that conversion's own report, printed as the report's variants table with the date and the CPU.

    python benchmarks/variants.py                                  # bert-base, 8 rows x 128 tokens, int8,int8-static
    python benchmarks/variants.py --variants optimized,int8,int8-static --budget 3

Each variant is checked against PyTorch on the sample and timed side by side with PyTorch, as every conversion
does (docs/variants.md); a variant that fails is repaired unless --no-repair. The bert-base classifier has
random weights from its config (benchmarks/models.py): nothing is downloaded. Not a unit test: it takes minutes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import models  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/studio-bench", help="folder for the model, sample and output")
    p.add_argument("--size", default="bert-base", choices=sorted(models.SIZES))
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--variants", default="int8,int8-static")
    p.add_argument("--budget", type=float, default=2.0, help="--latency-budget (s)")
    p.add_argument("--no-repair", action="store_true")
    args = p.parse_args(argv)

    from studio import ConvertSpec, convert
    from studio.report.render import VARIANT_COLUMNS, markdown_table, take_line, variant_rows

    work = Path(args.work).expanduser()
    ckpt = models.make_bert(work / args.size, args.size)
    sample = models.make_sample(work / f"{args.size}-sample-{args.rows}x{args.tokens}.csv", args.rows, args.tokens)
    out = work / f"out-{args.size}-variants"
    report = convert(
        ConvertSpec(
            checkpoint=str(ckpt),
            data=str(sample),
            out=str(out),
            variants=tuple(v for v in args.variants.split(",") if v),
            latency_budget_s=args.budget,
            cuda=False,
            repair=not args.no_repair,
            max_length=args.tokens,
        )
    )
    cpu = (report.latency.machine or {}).get("cpu") if report.latency else None
    print(
        f"{datetime.date.today().isoformat()} · {args.size}, {args.rows} rows x {args.tokens} tokens · "
        f"{cpu or platform.processor() or platform.machine()} · threads {report.latency.ort_cpu.threads if report.latency and report.latency.ort_cpu else '?'}"
    )
    print(markdown_table(VARIANT_COLUMNS, variant_rows(report.variants, report.latency)))
    print(take_line(report.variants))
    for v in report.variants:
        if v.repair:
            print(f"{v.name} repair: {json.dumps(v.repair)}")
        print(f"{v.name}: {v.quantized} quantized, built in {v.seconds} s; {v.notes[:300]}")
    print(f"report: {out / 'report.md'}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
