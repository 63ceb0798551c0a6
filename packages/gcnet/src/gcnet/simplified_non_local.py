"""The simplified non-local (SNL) block (Cao et al., "Global Context Networks", TPAMI, Sec. 4.1, Eq. 2-3,
Fig. 4b).

The NL block's attention maps are nearly the same for every query (Sec. 3), so SNL computes one global,
query-independent map and drops ``W_z``:

``z_i = x_i + sum_j softmax_j(W_k x_j) (W_v x_j)``                     (Eq. 2)
``    = x_i + W_v sum_j softmax_j(W_k x_j) x_j``                       (Eq. 3, W_v after the pooling)

Eq. 3 is what runs (the C x C conv touches one pooled vector instead of every position). In the global
context framework this is attention pooling + a single-conv transform + add fusion, i.e. the GC block's
"w/o ratio" transform of Table 5(d), so the class is a :class:`~gcnet.gc_block.GlobalContextBlock` with
``transform="single"``: ``conv_mask`` is ``W_k`` and ``channel_add_conv.0`` is ``W_v``.
"""

from __future__ import annotations

import torch

from gcnet.gc_block import GlobalContextBlock

__all__ = ["SimplifiedNonLocalBlock"]


class SimplifiedNonLocalBlock(GlobalContextBlock):
    """SNL block: (B, C, H, W) -> (B, C, H, W), Eq. 3; starts as the identity (``W_v`` zero-initialised).

    Args:
        channels: C.
        device: where the parameters are created (timm's factory kwargs).
        dtype: the parameters' dtype.
    """

    def __init__(
        self, channels: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__(
            channels, pooling="att", fusion=("channel_add",), transform="single", device=device, dtype=dtype
        )

    def extra_repr(self) -> str:
        return f"{self.channels}"
