"""Model + input names -> an nn.Module whose forward takes one named tensor per graph input.

torch.export (the new ONNX exporter) binds dynamic shapes to forward's parameter names, and a
`forward(self, *tensors)` wrapper fails on real transformers models with dynamic shapes; so the
wrapper's forward is generated with one explicit parameter per input.
"""

from __future__ import annotations

import keyword

import torch

from studio.errors import ExportError
from studio.sources.base import LoadedModel


class _Wrapper(torch.nn.Module):
    def __init__(self, loaded: LoadedModel, names: list[str]):
        super().__init__()
        self.model = loaded.module
        self._adapter = loaded.adapter
        self._names = names

    def _call(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self._adapter(self.model, dict(zip(self._names, tensors))))


def wrap(loaded: LoadedModel, input_names: list[str]) -> torch.nn.Module:
    """Return an eval-mode module `forward(<name1>, <name2>, ...) -> tuple of outputs`."""
    for n in input_names:
        if not n.isidentifier() or keyword.iskeyword(n) or n in ("self", "torch"):
            raise ExportError(f"Input name {n!r} cannot be a graph input name (it must be a Python identifier).")
    params = ", ".join(input_names)
    src = f"def forward(self, {params}):\n    return self._call({params},)\n"
    namespace: dict = {}
    exec(compile(src, "<studio.sources.wrap>", "exec"), namespace)  # names validated above: identifiers only
    cls = type("StudioExportWrapper", (_Wrapper,), {"forward": namespace["forward"]})
    return cls(loaded, list(input_names)).eval()
