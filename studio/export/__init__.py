"""PyTorch -> ONNX: the two exporters (torch.export-based and TorchScript) tried as a table in order, the
`--exporter compare` run that checks and times both, and their private helpers (the example inputs cut from
the sample, the legacy exporter"s external weights, the opset-17 Split rewrite, work run beside the export).

Public modules: `exporters` (export_onnx), `compare` (the compare exporter).
"""

__all__ = ["compare", "exporters"]
