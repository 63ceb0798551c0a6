"""The block's channel MLP: the released CMlp's keys and its formula ``fc2(GELU(fc1(x)))``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from container import ContainerBlock


def test_block_mlp_keys_and_parameters():
    block = ContainerBlock(16, mlp_ratio=4)
    mlp_keys = {k for k in block.state_dict() if k.startswith("mlp.")}
    assert mlp_keys == {"mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"}
    # fc1: 16 -> 64 and fc2: 64 -> 16, 1x1 convs with bias, nothing else
    assert sum(p.numel() for p in block.mlp.parameters()) == (16 * 64 + 64) + (64 * 16 + 16)


def test_block_mlp_is_fc2_gelu_fc1():
    torch.manual_seed(0)
    block = ContainerBlock(8, mlp_ratio=2).double()
    x = torch.randn(2, 8, 5, 3, dtype=torch.float64)
    sd = {k: v for k, v in block.state_dict().items() if k.startswith("mlp.")}
    want = F.conv2d(F.gelu(F.conv2d(x, sd["mlp.fc1.weight"], sd["mlp.fc1.bias"])), sd["mlp.fc2.weight"])
    want = want + sd["mlp.fc2.bias"].view(1, -1, 1, 1)
    torch.testing.assert_close(block.mlp(x), want, rtol=1e-12, atol=1e-12)
