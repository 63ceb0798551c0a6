"""The global context (GC) block (Cao et al., "Global Context Networks", TPAMI, Sec. 4.3, Eq. 5, Fig. 4c).

An instance of the paper's global context modelling framework (Eq. 4), ``z_i = F(x_i, delta(sum_j a_j x_j))``:

1. context modelling: attention pooling ``a_j = softmax_j(W_k x_j)`` (a 1x1 conv C -> 1) or plain average
   pooling ``a_j = 1 / N_p`` (Table 5(f) / 8(b));
2. transform ``delta = W_v2 ReLU(LN(W_v1 .))``: a bottleneck of width ``P = int(C * ratio)``, with the
   Table 5(d) ablations as :data:`TRANSFORMS` (``"single"`` is the simplified NL block's one C x C conv);
3. fusion: broadcast add (default) and/or multiply by ``sigmoid(delta)``; with both, multiply first, then
   add, from the same context.

Parameter names equal mmcv's ``ContextBlock`` (``conv_mask``, ``channel_add_conv.{0,1,3}``,
``channel_mul_conv.*``) so mmdetection GCNet checkpoints load unchanged. The add fusion is the block's
residual (there is no inner skip), and the paper's initialisation
(:meth:`GlobalContextBlock.reset_parameters`: last conv of each branch zero, ``conv_mask`` Kaiming fan-in)
makes an add-only block start as the identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from gcnet._checks import check_feature_map, hidden_channels

torch.fx.wrap("check_feature_map")  # an opaque call under plain torch.fx.symbolic_trace too

__all__ = ["FUSIONS", "POOLINGS", "TRANSFORMS", "GlobalContextBlock"]

POOLINGS = ("att", "avg")
FUSIONS = ("channel_add", "channel_mul")
#: Table 5(d): "ln_relu" is r16+LN+ReLU (the GC block), "relu" r16+ReLU, "linear" r16 (two convs, nothing
#: between them), "single" the w/o-ratio transform (one C -> C conv, as in the simplified NL block).
TRANSFORMS = ("ln_relu", "relu", "linear", "single")


def _transform(channels: int, planes: int, kind: str, dd: dict[str, Any]) -> nn.Sequential:
    """The bottleneck ``delta``: (B, C, 1, 1) -> (B, C, 1, 1); index layout of mmcv for "ln_relu"."""
    if kind == "single":
        return nn.Sequential(nn.Conv2d(channels, channels, 1, **dd))
    middle: list[nn.Module] = []
    if kind == "ln_relu":
        middle = [nn.LayerNorm([planes, 1, 1], **dd), nn.ReLU(inplace=True)]
    elif kind == "relu":
        middle = [nn.ReLU(inplace=True)]
    return nn.Sequential(nn.Conv2d(channels, planes, 1, **dd), *middle, nn.Conv2d(planes, channels, 1, **dd))


class GlobalContextBlock(nn.Module):
    """GC block: (B, C, H, W) -> (B, C, H, W), paper Eq. 5.

    Args:
        channels: C.
        ratio: bottleneck fraction, ``P = int(C * ratio)`` (1/16 for r16, 1/4 for r4).
        pooling: "att" (softmax attention pooling, the GC block) or "avg" (SE-style average pooling).
        fusion: a non-empty subset of ``("channel_add", "channel_mul")`` (mmcv's names); a single name is
            accepted too.
        transform: one of :data:`TRANSFORMS` (Table 5(d)).
        device: where the parameters are created (timm's factory kwargs: ``create_attn(..., device=...)``).
        dtype: the parameters' dtype.

    Raises:
        ValueError: unknown pooling / fusion / transform, or a ratio giving no hidden channels.
    """

    def __init__(
        self,
        channels: int,
        ratio: float = 1 / 16,
        pooling: str = "att",
        fusion: str | Sequence[str] = ("channel_add",),
        transform: str = "ln_relu",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__()
        fusion = (fusion,) if isinstance(fusion, str) else tuple(fusion)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not fusion or any(f not in FUSIONS for f in fusion) or len(set(fusion)) != len(fusion):
            raise ValueError(f"fusion must be a non-empty subset of {FUSIONS}, got {fusion!r}")
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        self.channels = channels
        self.planes = hidden_channels(channels, ratio) if transform != "single" else channels
        self.pooling = pooling
        self.fusion = tuple(f for f in FUSIONS if f in fusion)
        self.transform = transform
        # W_k: one attention logit per position
        self.conv_mask = nn.Conv2d(channels, 1, 1, **dd) if pooling == "att" else None
        self.channel_add_conv = (
            _transform(channels, self.planes, transform, dd) if "channel_add" in fusion else None
        )
        self.channel_mul_conv = (
            _transform(channels, self.planes, transform, dd) if "channel_mul" in fusion else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's init: zero last conv per branch (identity for add), Kaiming fan-in ``conv_mask``.

        Backbones call this again after their own weight init so the GC init survives it.
        """
        if self.conv_mask is not None:
            nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.conv_mask.bias)  # type: ignore[arg-type]
        for branch in (self.channel_add_conv, self.channel_mul_conv):
            if branch is None:
                continue
            for m in branch:
                if isinstance(m, (nn.Conv2d, nn.LayerNorm)):
                    m.reset_parameters()
            last = branch[-1]
            assert isinstance(last, nn.Conv2d)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)  # type: ignore[arg-type]

    def zero_init_last(self) -> None:
        """timm's hook: ResNet's ``init_weights`` Kaiming-initialises every conv of the model, this block's
        included, then calls ``zero_init_last()`` on each module that has it; restoring the paper's init here
        makes a GC block inserted through ``block_args=dict(attn_layer=...)`` start as the identity."""
        self.reset_parameters()

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """The pooling weights ``a_j``: (B, C, H, W) -> (B, 1, H*W), shared by every query position."""
        if self.conv_mask is None:
            n = x.shape[2] * x.shape[3]
            return x.new_full((x.shape[0], 1, n), 1.0 / n)
        return self.conv_mask(x).flatten(2).softmax(dim=-1)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """Context modelling ``sum_j a_j x_j``: (B, C, H, W) -> (B, C, 1, 1)."""
        if self.conv_mask is None:
            return F.adaptive_avg_pool2d(x, 1)
        weights = self.attention_map(x)  # (B, 1, N)
        return torch.matmul(x.flatten(2), weights.transpose(1, 2)).unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> z: (B, C, H, W), ``z = x * sigmoid(delta_mul(c)) + delta_add(c)``."""
        check_feature_map(x, self.channels)
        context = self.context(x)
        out = x
        if self.channel_mul_conv is not None:
            out = out * torch.sigmoid(self.channel_mul_conv(context))
        if self.channel_add_conv is not None:
            out = out + self.channel_add_conv(context)
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, planes={self.planes}, pooling={self.pooling!r}, fusion={self.fusion}, "
            f"transform={self.transform!r}"
        )
