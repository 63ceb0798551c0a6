"""The CPU emulation of CUDA's autocast dtype policy (ctxnets_shared.testing.autocast)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ctxnets_shared.testing import ModelSpec, build, cuda_autocast_policy, cuda_like_autocast

sys.path.insert(0, str(Path(__file__).parent))
import toy_models  # noqa: F401  (registers the toy models)

HALF = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", HALF)
def test_float32_list_ops_return_float32_beside_half_matmuls(dtype: torch.dtype) -> None:
    x = torch.randn(2, 8, 5, 5)
    conv = nn.Conv2d(8, 8, 1)
    with cuda_like_autocast(dtype):
        y = conv(x)
        assert y.dtype == dtype  # convolutions and matrix products in half precision, as on CUDA
        assert (y @ y.transpose(-1, -2)).dtype == dtype
        assert F.softmax(y, dim=-1).dtype == torch.float32
        assert y.softmax(-1).dtype == torch.float32
        assert y.log_softmax(-1).dtype == torch.float32
        assert F.layer_norm(y, (5,)).dtype == torch.float32
        assert nn.GroupNorm(2, 8)(y).dtype == torch.float32
        assert y.sum().dtype == torch.float32 and (y**2).dtype == torch.float32
        assert F.cross_entropy(y.flatten(1), torch.tensor([0, 1])).dtype == torch.float32
        # not on the list: element-wise ops and mean keep the input's dtype
        assert F.relu(y).dtype == dtype and y.mean().dtype == dtype
        # an explicit dtype= is respected, as on CUDA
        assert y.softmax(-1, dtype=dtype).dtype == dtype
        with torch.autocast("cpu", enabled=False):
            assert F.softmax(y, dim=-1).dtype == dtype  # autocast switched off inside: no policy either
    assert F.softmax(y, dim=-1).dtype == dtype  # nothing leaks out of the block


def test_plain_cpu_autocast_keeps_softmax_in_half_precision() -> None:
    # why the emulation exists: CPU autocast alone does not show CUDA's float32 outputs
    y = torch.randn(2, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.softmax(y, dim=-1).dtype == torch.bfloat16


def test_emulated_policy_finds_a_dtype_bug_that_plain_cpu_autocast_misses() -> None:
    spec = ModelSpec("ctxnets_toy_autocast_dtype_mix")
    model = build(spec).train()
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()  # passes under CPU autocast
    model.zero_grad()
    with cuda_like_autocast(torch.bfloat16):
        out = model(x)
    with pytest.raises(RuntimeError, match="expected scalar type"):
        out.float().sum().backward()


def test_rejects_non_half_dtypes() -> None:
    with pytest.raises(ValueError, match="bfloat16 or torch.float16"), cuda_like_autocast(torch.float32):
        pass


def test_checkpoint_recomputation_runs_under_the_policy() -> None:
    # torch.utils.checkpoint re-enters the forward's autocast state to recompute in backward; on CUDA that
    # state carries the float32 policy, and so it must here (else the recomputed dtypes differ)
    conv = nn.Conv2d(4, 4, 1)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    with cuda_autocast_policy():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = torch.utils.checkpoint.checkpoint(lambda t: conv(t).softmax(-1), x, use_reentrant=False)
        assert y.dtype == torch.float32
        y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_policy_overrides_are_removed_afterwards() -> None:
    before = (torch.Tensor.softmax, F.layer_norm, torch.sum)
    with cuda_autocast_policy(), cuda_autocast_policy():
        assert torch.Tensor.softmax is not before[0]
    assert (torch.Tensor.softmax, F.layer_norm, torch.sum) == before
