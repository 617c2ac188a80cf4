"""Faster files beside model.onnx (ORT-optimized, int8, fp16), each built, checked against PyTorch and
timed like the main file. `table` runs the requested variants; `_builders` writes each file and `_int8` is
the dynamic int8 quantizer.
"""

__all__ = ["table"]
