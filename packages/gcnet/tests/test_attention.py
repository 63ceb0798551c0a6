"""gcnet.analysis's MultiHeadSelfAttention2d against a hand-written attention, spatial reduction, errors."""

from __future__ import annotations

import math

import pytest
import torch

from gcnet.analysis import MultiHeadSelfAttention2d


def _reference_attention(m: MultiHeadSelfAttention2d, x: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    h, d = m.num_heads, C // m.num_heads
    q = m.q(x).reshape(B, h, d, H * W)
    k, v = m.kv(x).reshape(B, 2, h, d, H * W).unbind(1)
    attn = torch.softmax(torch.einsum("bhdn,bhdm->bhnm", q, k) / math.sqrt(d), dim=-1)
    out = torch.einsum("bhnm,bhdm->bhdn", attn, v).reshape(B, C, H, W)
    return m.proj(out)


def test_mhsa_matches_reference() -> None:
    torch.manual_seed(0)
    m = MultiHeadSelfAttention2d(32, num_heads=4, qkv_bias=True).eval()
    x = torch.randn(2, 32, 5, 7)
    torch.testing.assert_close(m(x), _reference_attention(m, x), rtol=1e-5, atol=1e-5)


def test_mhsa_spatial_reduction_and_errors() -> None:
    m = MultiHeadSelfAttention2d(32, num_heads=2, sr_ratio=2)
    assert m(torch.randn(1, 32, 8, 8)).shape == (1, 32, 8, 8)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        MultiHeadSelfAttention2d(30, num_heads=4)


def test_mhsa_scripts() -> None:
    m = MultiHeadSelfAttention2d(16, num_heads=2).eval()
    x = torch.randn(1, 16, 4, 4)
    torch.testing.assert_close(torch.jit.script(m)(x), m(x))
