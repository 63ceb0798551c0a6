"""Projector and predictor MLPs of the C- and T-streams (BYOL's heads, as CARE uses them, paper Sec. 3.1)."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["MLPHead"]


class MLPHead(nn.Module):
    """Linear(in, hidden) -> BatchNorm1d -> ReLU -> Linear(hidden, out).

    Used both as projector (in = backbone width) and predictor (in = out = 256). No normalisation at its
    output: CARE L2-normalises only the final online prediction and the final target projection.

    Args:
        in_dim: input features.
        hidden_dim: hidden width (4096 in the paper).
        out_dim: output features (256 in the paper).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.bn = nn.BatchNorm1d(hidden_dim)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_dim) -> (B, out_dim)."""
        return self.fc2(self.act(self.bn(self.fc1(x))))
