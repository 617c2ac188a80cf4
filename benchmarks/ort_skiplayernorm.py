"""ONNX Runtime's CPU SkipLayerNormalization kernel against the Add + LayerNormalization it replaces.

Why this exists: on the Intel Xeon (AVX-512, AMX) machine of the 2026-11-23 benchmark, ORT 1.31.1's fused
SkipLayerNormalization was ~5x slower than Add + LayerNormalization on a bert-base activation (8 x 128 x 768,
1 or 2 threads). ORT's default session fuses Add + LayerNormalization into it (SkipLayerNormFusion), so
bert-base fp32 and int8 both pay for it: disabling that fusion made them ~6% and ~10% faster there. The
studio times sessions as a user gets them by default, so its figures include the slow kernel; re-run this
after an onnxruntime upgrade to see whether that still holds.

    python benchmarks/ort_skiplayernorm.py [--threads 2] [--rows 1024] [--hidden 768]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper


def model(fused: bool, rows: int, hidden: int) -> bytes:
    shape = [rows, 1, hidden]
    inits = [
        helper.make_tensor("gamma", TensorProto.FLOAT, [hidden], np.ones(hidden, np.float32)),
        helper.make_tensor("beta", TensorProto.FLOAT, [hidden], np.zeros(hidden, np.float32)),
    ]
    if fused:
        nodes = [
            helper.make_node(
                "SkipLayerNormalization", ["x", "skip", "gamma", "beta"], ["y"], domain="com.microsoft", epsilon=1e-12
            )
        ]
    else:
        nodes = [
            helper.make_node("Add", ["x", "skip"], ["sum"]),
            helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12),
        ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "skip")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        inits,
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, ir_version=9, opset_imports=opsets).SerializeToString()


def time_ms(session: ort.InferenceSession, feeds: dict, calls: int) -> float:
    for _ in range(10):
        session.run(None, feeds)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=1024, help="batch x sequence (bert-base sample: 8 x 128)")
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((args.rows, 1, args.hidden), dtype=np.float32) for n in ("x", "skip")}
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # time each graph as written
    results, outputs = {}, {}
    for fused in (True, False):
        session = ort.InferenceSession(model(fused, args.rows, args.hidden), so, providers=["CPUExecutionProvider"])
        outputs[fused] = session.run(None, feeds)[0]
        results[fused] = time_ms(session, feeds, args.calls)
    diff = float(np.abs(outputs[True] - outputs[False]).max())  # same arithmetic, or the race is unfair
    print(
        f"onnxruntime {ort.__version__}, {args.rows} x {args.hidden} fp32, {args.threads} threads, "
        f"median of {args.calls} calls"
    )
    print("| graph | p50 ms |\n|---|---|")
    print(f"| SkipLayerNormalization (com.microsoft) | {results[True]:.3f} |")
    print(f"| Add + LayerNormalization | {results[False]:.3f} |")
    print(f"fused / unfused: {results[True] / results[False]:.2f}x; max abs difference of the outputs {diff:.1e}")
    if diff > 1e-4:
        raise SystemExit("the two graphs disagree: the comparison is meaningless")


if __name__ == "__main__":
    main()
