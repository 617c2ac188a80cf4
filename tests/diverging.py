"""A model whose TorchScript export diverges from PyTorch at a known module, saved as a whole pickled
nn.Module (a trusted checkpoint) so the pipeline loads it like any upload: PyTorch's Softplus returns x where
beta * x > threshold; the TorchScript exporter drops the threshold (see tests/test_locate.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class SoftplusThreshold(nn.Module):
    """price, quantity -> lin1 -> tanh -> Softplus(beta=2, threshold=0.5) -> lin2 (3 logits)."""

    def __init__(self):
        super().__init__()
        self.lin1, self.act, self.lin2 = nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 3)
        self.soft = nn.Softplus(beta=2.0, threshold=0.5)

    def forward(self, price, quantity):
        return self.lin2(self.soft(self.act(self.lin1(torch.cat([price, quantity], dim=-1)))))


def save(path: Path) -> Path:
    """The pickled module at `path` (load it with trust_code=True)."""
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(SoftplusThreshold().eval(), path)
    return path
