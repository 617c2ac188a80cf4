"""Faster files beside model.onnx (ORT-optimized, int8, int8-static, fp16), each built, checked against PyTorch
and timed like the main file. `table` runs the requested variants; `_builders` writes each file, `_int8` is the
dynamic int8 quantizer, `_static` the static (calibrated, QDQ) one, and `_repair` keeps the nodes that break a
failing variant in float.
"""

__all__ = ["table"]
