"""CARE's three losses (paper Eqs. 1, 3, 4, 5), in the official code's reductions.

``L_c`` and ``L_t`` are symmetric BYOL losses: 2 - 2 cos between the online prediction of one view and the
target projection of the other, summed over the two pairings and averaged over the batch. ``L_att`` is the
mean squared error (averaged over batch x 256 elements, torch's MSELoss default) between the normalised
online C-stream and the detached normalised online T-stream output, summed over the two views. The weight
lambda = 100 of paper Table 6 assumes exactly this reduction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["CareLosses", "attention_loss", "byol_loss", "symmetric_byol_loss"]


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, z), averaged over the batch (paper Eq. 1). p, z: (B, D)."""
    return (2 - 2 * F.cosine_similarity(p, z, dim=-1)).mean()


def symmetric_byol_loss(
    p1: torch.Tensor, z2: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor
) -> torch.Tensor:
    """Online prediction of each view against the target projection of the other, both pairings summed."""
    return byol_loss(p1, z2) + byol_loss(p2, z1)


def attention_loss(c1: torch.Tensor, t1: torch.Tensor, c2: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """L_att (paper Eq. 4 in the official MSE form): the C-stream output regresses the T-stream's.

    The T-stream side is detached here, so L_att never trains the transformer or its heads.
    c*, t*: (B, D) normalised online outputs of view 1 and 2.
    """
    return F.mse_loss(c1, t1.detach()) + F.mse_loss(c2, t2.detach())


@dataclass
class CareLosses:
    """What ``CARE.forward`` returns. ``total = c + t + lam * att`` (paper Eq. 5); byol mode: t = att = 0."""

    total: torch.Tensor
    c: torch.Tensor
    t: torch.Tensor
    att: torch.Tensor

    def as_dict(self) -> dict[str, float]:
        """Python floats, for logging."""
        return {
            "loss": float(self.total.detach()),
            "loss_c": float(self.c.detach()),
            "loss_t": float(self.t.detach()),
            "loss_att": float(self.att.detach()),
        }
