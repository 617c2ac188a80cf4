"""Latency measured honestly: PyTorch eager and ONNX Runtime on CPU and (when truly in use) CUDA, in
alternating rounds until the median"s 95% confidence interval is tight or the budget is spent.

Public module: `latency`. `_rounds` is its timing engine, `_confidence` the median"s interval.
"""

__all__ = ["latency"]
