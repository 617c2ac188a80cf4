"""The example inputs the exporters get, cut from the user's sample.

`trace_inputs`: what the exporters trace, the sample itself (a 1-row sample as 2 rows: torch.export fixes
a size-1 dimension to a constant).

`small_inputs`: a few rows and tokens of it, for work that only needs the model's shape behaviour, not its
values at the sample's size: export._output_axes runs the model at the example size and at size + 1 along
each dynamic axis to see which output dims follow; on bert-base at 8x128 those three runs took ~5 s of the
legacy export, at 2x16 a few milliseconds."""

from __future__ import annotations

import torch

SMALL_ROWS = 2  # rows along a dynamic batch axis (small_inputs)
SMALL_TOKENS = 16  # positions along a dynamic sequence axis (small_inputs)


def trace_inputs(tensors: dict[str, torch.Tensor], axes: dict[str, dict[int, str]]) -> dict[str, torch.Tensor]:
    """The sample as the exporters trace it; only the example changes, parity always runs on the real rows."""
    batch_dynamic = any(0 in a for a in axes.values())
    if batch_dynamic and all(t.shape[0] == 1 for t in tensors.values()):
        return {n: t.repeat(2, *([1] * (t.dim() - 1))) for n, t in tensors.items()}
    return tensors


def small_inputs(
    names: list[str], args: tuple[torch.Tensor, ...], axes: dict[str, dict[int, str]]
) -> tuple[torch.Tensor, ...]:
    """`args` cut to at most SMALL_ROWS along each dynamic batch axis and SMALL_TOKENS along each dynamic
    sequence axis (never below 2); static axes keep their size."""
    out = []
    for name, t in zip(names, args):
        for ax, sym in axes.get(name, {}).items():
            keep = max(2, SMALL_ROWS if sym == "batch" else SMALL_TOKENS)
            if keep < t.shape[ax]:
                t = t.narrow(ax, 0, keep)
        out.append(t.contiguous())
    return tuple(out)
