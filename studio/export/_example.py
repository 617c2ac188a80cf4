"""The example inputs the exporters get, cut from the user's sample.

`trace_inputs`: what the exporters trace: the sample's first TRACE_ROWS rows and TRACE_TOKENS positions
along its dynamic axes (a 1-row sample as 2 rows: torch.export fixes a size-1 dimension to a constant).
The exported graph is then checked at the sample's full size (parity, on every real row) and by shape
probes one axis away from the traced size (parity.probe_plan), so tracing small loses no check and makes
the probes exact: each changes one axis from what the exporter saw. It is also cheaper: the legacy exporter
runs the model at the example's size; on bert-base at 8x128 that trace took ~2.6 s, and the probes at the
sample's size ~2.7 s. A static axis keeps its size (it must be exported as it is); a model that refuses the
small size (an audio model's convolutions need thousands of samples) is traced on the whole sample.

`small_inputs`: the same cut, for export._output_axes (which output dims follow the batch / sequence size).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

TRACE_ROWS = 2  # rows along a dynamic batch axis
TRACE_TOKENS = 16  # positions along a dynamic sequence axis


def _cut(symbol: str) -> int:
    return max(2, TRACE_ROWS if symbol == "batch" else TRACE_TOKENS)


def small_inputs(
    names: list[str], args: tuple[torch.Tensor, ...], axes: dict[str, dict[int, str]]
) -> tuple[torch.Tensor, ...]:
    """`args` cut to at most TRACE_ROWS along each dynamic batch axis and TRACE_TOKENS along each dynamic
    sequence axis; static axes keep their size."""
    out = []
    for name, t in zip(names, args):
        for ax, sym in axes.get(name, {}).items():
            if _cut(sym) < t.shape[ax]:
                t = t.narrow(ax, 0, _cut(sym))
        out.append(t.contiguous())
    return tuple(out)


def _two_rows(tensors: dict[str, torch.Tensor], axes: dict[str, dict[int, str]]) -> dict[str, torch.Tensor]:
    batch_dynamic = any(0 in a for a in axes.values())
    if batch_dynamic and all(t.shape[0] == 1 for t in tensors.values()):
        return {n: t.repeat(2, *([1] * (t.dim() - 1))) for n, t in tensors.items()}
    return tensors


def trace_inputs(
    call: Callable[..., object], tensors: dict[str, torch.Tensor], axes: dict[str, dict[int, str]]
) -> dict[str, torch.Tensor]:
    """The inputs to trace with: the small cut when `call(*tensors in order)` runs at it, else the sample."""
    names = list(tensors)
    small = dict(zip(names, small_inputs(names, tuple(tensors.values()), axes)))
    if any(small[n].shape != t.shape for n, t in tensors.items()):
        try:
            with torch.no_grad():
                call(*small.values())
            return _two_rows(small, axes)
        except Exception:  # noqa: BLE001 - the model refuses the small size (any error): trace the sample
            pass
    return _two_rows(tensors, axes)


def traced_shape(names: list[str], args: tuple[torch.Tensor, ...], axes: dict[str, dict[int, str]]) -> list[int | None]:
    """[batch, sequence] of an example along its dynamic axes (None where no input has that axis)."""
    found: dict[str, int] = {}
    for name, t in zip(names, args):
        for ax, sym in axes.get(name, {}).items():
            found.setdefault(sym, int(t.shape[ax]))
    return [found.get("batch"), found.get("sequence")]
