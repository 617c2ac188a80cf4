"""ONNX Studio: turn a PyTorch checkpoint into a verified ONNX artifact.

import studio
report = studio.convert(studio.ConvertSpec("studio/demo/demo_model.pt", "studio/demo/sample.csv", out="out"))
report.ok, report.parity.outputs[0].max_abs_diff
"""

from __future__ import annotations

from studio._version import __version__
from studio.errors import (
    BatchError,
    CheckpointError,
    ExportError,
    OpsetMismatchError,
    StudioError,
    UnsafeCheckpointError,
    UnsafePathError,
)
from studio.report.model import Report
from studio.spec import ConvertSpec, SampleLimits


def convert(spec: ConvertSpec | None = None, /, progress=None, **options) -> Report:
    """Run a conversion. Pass a ConvertSpec, or its fields as keywords:
    `studio.convert(checkpoint="m.pt", data="rows.csv", out="out")`."""
    from studio.pipeline import convert as _convert

    if spec is None:
        spec = ConvertSpec(**options)
    elif options:
        raise TypeError("pass either a ConvertSpec or keyword options, not both")
    return _convert(spec, progress)


def load_checkpoint(path, spec: ConvertSpec | None = None):
    """Load a checkpoint into a LoadedModel (module, tokenizer, inputs, outputs)."""
    from studio.sources import load

    return load(path, spec)


def read_sample(path, limits=None):
    """Read a sample file (CSV / TSV / JSON / JSONL) into a pandas DataFrame. limits: a SampleLimits
    (or "rows=N,..."); default: the studio's sample limits."""
    from studio.inputs.sample import read_sample as _read

    return _read(path, limits)


def build_batch(df, model, roles: dict[str, str] | None = None, spec: ConvertSpec | None = None):
    """Sample rows + role mapping -> named tensors for `model`."""
    from studio.inputs.batch import build_batch as _build

    return _build(df, model, roles or {}, spec.validated() if spec is not None else None)


def suggest_roles(df) -> dict[str, str]:
    from studio.inputs.roles import suggest_roles as _suggest

    return _suggest(df)


def inspect_onnx(path):
    """Graph inputs/outputs, opset, op counts and checker verdict of an .onnx file."""
    from pathlib import Path

    from studio.checks.graph_info import check, graph_info

    return graph_info(Path(path)), check(Path(path))


# modules of the public API, imported on first use (`import studio` stays light: no torch)
_MODULES = {"locate": "studio.checks.locate", "divergence": "studio.report.divergence"}


def __getattr__(name: str):
    """`studio.locate` and `studio.divergence` (also `from studio import locate, divergence`)."""
    if name in _MODULES:
        import importlib

        return importlib.import_module(_MODULES[name])
    raise AttributeError(f"module 'studio' has no attribute {name!r}")


__all__ = [
    "convert",
    "ConvertSpec",
    "SampleLimits",
    "Report",
    "load_checkpoint",
    "read_sample",
    "build_batch",
    "suggest_roles",
    "inspect_onnx",
    "locate",
    "divergence",
    "StudioError",
    "CheckpointError",
    "UnsafeCheckpointError",
    "BatchError",
    "ExportError",
    "OpsetMismatchError",
    "UnsafePathError",
    "__version__",
]
