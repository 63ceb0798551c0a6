"""The official CoT layer and SE conv forwards, written out from specs/cot.md with functional ops on a
layer's parameters: what the cot tests check the layers and the seven networks against."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F


def _bn(x: torch.Tensor, bn: torch.nn.Module) -> torch.Tensor:
    # running statistics are copies: the reference leaves the layer's buffers alone
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    return F.batch_norm(x, mean, var, bn.weight, bn.bias, bn.training, 0.1, bn.eps)


def _aggregate(v: torch.Tensor, w: torch.Tensor, K: int, dilation: int) -> torch.Tensor:
    """unfold formulation (materialises K*K copies of v): channel c uses map c % M."""
    B, C, H, W = v.shape
    M = w.shape[1] // (K * K)
    taps = F.unfold(v, K, dilation=dilation, padding=dilation * (K // 2)).view(B, C, K * K, H, W)
    maps = w.view(B, M, K * K, H, W).repeat(1, C // M, 1, 1, 1)
    return (taps * maps).sum(2)


def official_cot_forward(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """specs/cot.md steps 1-6 (CoXt: interleaved q/k, groups 2, aggregation per half), default options."""
    B, C, H, W = x.shape
    g, K, d = layer.groups, layer.kernel_size, layer.dilation
    key = layer.key_embed[0]
    k1 = F.conv2d(x, key.weight, padding=d * (K // 2), dilation=d, groups=key.groups)
    k1 = F.relu(_bn(k1, layer.key_embed[1]))
    qk = torch.stack([x, k1], dim=2).reshape(B, 2 * C, H, W) if g > 1 else torch.cat([x, k1], dim=1)
    e0, e3, gn = layer.embed[0], layer.embed[3], layer.embed[4]
    h = F.relu(_bn(F.conv2d(qk, e0.weight, groups=g), layer.embed[1]))
    w = F.group_norm(F.conv2d(h, e3.weight, e3.bias, groups=g), gn.num_groups, gn.weight, gn.bias, gn.eps)
    v = _bn(F.conv2d(x, layer.conv1x1[0].weight, groups=g), layer.conv1x1[1])
    halves = [_aggregate(vh, wh, K, d) for vh, wh in zip(v.chunk(g, 1), w.chunk(g, 1))]
    k2 = F.silu(_bn(torch.cat(halves, dim=1), layer.bn))
    se = layer.se
    s = (k1 + k2).mean((2, 3), keepdim=True)
    a = F.conv2d(F.relu(_bn(F.conv2d(s, se[0].weight, se[0].bias), se[1])), se[3].weight, se[3].bias)
    a = a.view(B, C, 2).softmax(dim=2)  # channel 2c weighs K2, 2c + 1 weighs K1
    return k2 * a[:, :, 0, None, None] + k1 * a[:, :, 1, None, None]


def official_se_conv_forward(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """specs/cot.md: conv, BN, SiLU, GAP, fc (bias), BN, SiLU, fc (bias), sigmoid gate."""
    conv = layer.conv
    y = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation)
    y = F.silu(_bn(y, layer.bn0))
    s = F.silu(_bn(F.conv2d(y.mean((2, 3), keepdim=True), layer.fc1.weight, layer.fc1.bias), layer.bn1))
    return y * F.conv2d(s, layer.fc2.weight, layer.fc2.bias).sigmoid()


@pytest.fixture(scope="session")
def official_cot() -> Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]:
    return official_cot_forward


@pytest.fixture(scope="session")
def official_se_conv() -> Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]:
    return official_se_conv_forward
