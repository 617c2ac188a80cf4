"""Time ONNX files side by side in ONNX Runtime on the CPU: is the studio's model.onnx as fast as a peer's?

    python benchmarks/ort_files.py OUT/model.onnx OPTIMUM_OUT/model.onnx [more.onnx ...] --batch 8 --tokens 128

Every file gets the same random token ids (all-ones attention mask, zero token types; only the inputs a
file declares), sessions built as the studio builds them (`runtime.cpu_session`: all optimisations, arena
on, --threads intra-op threads), and is timed with the studio's own engine (`rounds.side_by_side`: up to 6
alternating rounds, idle threads before each block, stopped once every median is known within +-3%), so a
drift of the machine's speed hits every file alike. Prints p50 / p90 / iterations / CI and the ratio to the
first file. Not a unit test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from studio.checks import runtime  # noqa: E402
from studio.timing._rounds import side_by_side  # noqa: E402


def feeds(session, batch: int, tokens: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    made = {
        "input_ids": rng.integers(0, 1000, (batch, tokens), dtype=np.int64),
        "attention_mask": np.ones((batch, tokens), np.int64),
        "token_type_ids": np.zeros((batch, tokens), np.int64),
    }
    missing = [i.name for i in session.get_inputs() if i.name not in made]
    if missing:
        raise SystemExit(f"inputs this script cannot make: {', '.join(missing)}")
    return {i.name: made[i.name] for i in session.get_inputs()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help=".onnx files (the first is the baseline of the ratios)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=6.0, help="seconds of timed calls per file at most")
    args = p.parse_args(argv)
    sessions = {f: runtime.cpu_session(f, args.threads) for f in args.files}
    rng = np.random.default_rng(0)
    inputs = feeds(next(iter(sessions.values())), args.batch, args.tokens, rng)
    runners = {}
    for f, s in sessions.items():
        mine = {i.name: inputs[i.name] for i in s.get_inputs()}
        runners[f] = lambda s=s, mine=mine: s.run(None, mine)
    stats = side_by_side(runners, args.budget, precision=0.03)
    base = stats[args.files[0]].p50
    print(
        f"| file | p50 ms | p90 ms | iters | p50 95% CI | vs {Path(args.files[0]).parent.name}/{Path(args.files[0]).name} |"
    )
    print("|---|---|---|---|---|---|")
    for f, st in stats.items():
        ci = f"±{st.ci95_pct:.1f}%" if st.ci95_pct is not None else "-"
        print(f"| {f} | {st.p50:.2f} | {st.p90:.2f} | {st.iterations} | {ci} | {base / st.p50:.2f}x |")
    print(f"\n{args.batch}x{args.tokens}, {args.threads} threads, stopped by {next(iter(stats.values())).stopped}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
