"""What proves an .onnx file: the one place ONNX Runtime sessions are built (`runtime`), the graph"s inputs,
outputs and checker verdict (`graph_info`), PyTorch-vs-ONNX Runtime parity on the sample rows and at other
batch / sequence sizes (`parity`), and where the two first part (`locate`, with `_scopes` tying ONNX nodes to
PyTorch module calls).
"""

__all__ = ["graph_info", "locate", "parity", "runtime"]
