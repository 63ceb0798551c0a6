"""The non-local (NL) block in its four instantiations (Wang et al., CVPR 2018; GCNet paper Sec. 3.1, Eq. 1).

``z_i = x_i + W_z sum_j w_ij (W_v x_j)`` with the normalised pairwise weights ``w_ij``:

- ``"gaussian"``: ``softmax_j <x_i, x_j>`` on the raw input;
- ``"embedded_gaussian"``: ``softmax_j <W_q x_i, W_k x_j>`` (the instantiation the paper analyses and
  ``nl_resnet50`` uses);
- ``"dot_product"``: ``<W_q x_i, W_k x_j> / N_p``;
- ``"concatenation"``: ``ReLU(w_f^T [W_q x_i, W_k x_j]) / N_p``.

``W_z`` is a 1x1 conv followed by BatchNorm whose scale starts at zero (the NL paper's init), so the block
starts as the identity. The block exposes its full (B, N_p, N_p) attention through
:meth:`NonLocalBlock.attention_map`, which the analysis tools (:mod:`gcnet.analysis`) read.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from gcnet._checks import check_feature_map

torch.fx.wrap("check_feature_map")  # an opaque call under plain torch.fx.symbolic_trace too

__all__ = ["NL_MODES", "NonLocalBlock"]

NL_MODES = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")


class NonLocalBlock(nn.Module):
    """Non-local block: (B, C, H, W) -> (B, C, H, W), Eq. 1 of the GCNet paper.

    Args:
        channels: C.
        mode: one of :data:`NL_MODES`.
        reduction: inner width ``C_i = C // reduction`` of ``W_q``, ``W_k``, ``W_v`` (2 in the NL paper).
        use_scale: divide the embedded-Gaussian logits by ``sqrt(C_i)`` (mmcv's default; the paper's
            formula has no scale, so off by default).
        device: where the parameters are created (timm's factory kwargs: ``create_attn(..., device=...)``).
        dtype: the parameters' dtype.

    Raises:
        ValueError: unknown mode, or a reduction leaving no inner channels.
    """

    def __init__(
        self,
        channels: int,
        mode: str = "embedded_gaussian",
        reduction: int = 2,
        use_scale: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__()
        if mode not in NL_MODES:
            raise ValueError(f"mode must be one of {NL_MODES}, got {mode!r}")
        if channels <= 0 or reduction <= 0 or channels // reduction < 1:
            raise ValueError(
                f"channels={channels} // reduction={reduction} leaves no inner channels: "
                f"reduction must be in 1..{max(channels, 1)}"
            )
        inner = channels // reduction
        self.channels = channels
        self.inner_channels = inner
        self.mode = mode
        self.scale = 1.0 / math.sqrt(inner) if use_scale else 1.0
        self.value = nn.Conv2d(channels, inner, 1, **dd)  # W_v
        embedded = mode != "gaussian"
        self.query = nn.Conv2d(channels, inner, 1, **dd) if embedded else None  # W_q
        self.key = nn.Conv2d(channels, inner, 1, **dd) if embedded else None  # W_k
        # w_f of the concatenation instantiation: [W_q x_i, W_k x_j] (2 C_i) -> one logit
        concat = mode == "concatenation"
        self.concat_project = nn.Conv2d(2 * inner, 1, 1, bias=False, **dd) if concat else None
        self.proj = nn.Conv2d(inner, channels, 1, bias=False, **dd)  # W_z
        self.norm = nn.BatchNorm2d(channels, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch defaults for the convs, zero BN scale after ``W_z`` (identity at init)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()
        self.norm.reset_parameters()
        nn.init.zeros_(self.norm.weight)

    def zero_init_last(self) -> None:
        """timm's hook, called by ResNet's ``init_weights`` after it re-initialises every conv: restores the
        NL init so a block inserted through ``block_args=dict(attn_layer=...)`` starts as the identity."""
        self.reset_parameters()

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Pairwise weights ``w_ij``: (B, C, H, W) -> (B, N_p, N_p), query i on dim 1, position j on dim 2."""
        if self.query is None or self.key is None:  # Gaussian: similarity of the raw features
            q = x.flatten(2)
            k = q
        else:
            q = self.query(x).flatten(2)
            k = self.key(x).flatten(2)
        if self.concat_project is not None:
            # w_f^T [q_i, k_j] = w_q . q_i + w_k . k_j: project each half once instead of forming the
            # (2 C_i, N_p, N_p) concatenation
            w_q, w_k = self.concat_project.weight.flatten(1).chunk(2, dim=1)  # (1, C_i) each
            logits = torch.matmul(w_q, q).transpose(1, 2) + torch.matmul(w_k, k)  # (B, N, 1) + (B, 1, N)
            return F.relu(logits) / logits.shape[-1]
        logits = torch.matmul(q.transpose(1, 2), k)  # (B, N, N): <q_i, k_j>
        if self.mode == "dot_product":
            return logits / logits.shape[-1]
        return (logits * self.scale).softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> z: (B, C, H, W), ``z_i = x_i + BN(W_z sum_j w_ij W_v x_j)``."""
        check_feature_map(x, self.channels)
        weights = self.attention_map(x)  # (B, N, N)
        v = self.value(x).flatten(2).transpose(1, 2)  # (B, N, C_i)
        y = torch.matmul(weights, v).transpose(1, 2).unflatten(2, x.shape[2:])  # (B, C_i, H, W)
        return x + self.norm(self.proj(y))

    def extra_repr(self) -> str:
        return f"{self.channels}, mode={self.mode!r}, inner_channels={self.inner_channels}"
