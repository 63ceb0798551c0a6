"""The T-stream's positional tables follow the real C4 size; wrong sizes and bad backbones fail clearly."""

from __future__ import annotations

import pytest
import torch

from care_ssl import CARE, BackboneError, TStream
from care_ssl.tstream import MHSA

TINY = {"hidden_dim": 32, "proj_dim": 16, "depth": 2, "dim_head": 8}


@pytest.mark.parametrize(
    ("img_size", "c4_side", "pooled_side"),
    [(64, 4, 2), (96, 6, 3), (80, 5, 3)],  # 80 px: odd C4 side, pooled in ceil mode like the shortcut
)
def test_absolute_tables_follow_the_real_c4_map(img_size: int, c4_side: int, pooled_side: int) -> None:
    m = CARE("resnet18", img_size=img_size, **TINY)
    assert m.backbone.c4_shape == (256, c4_side, c4_side)
    first, second = (blk.attn.pos for blk in m.transformer.blocks)
    assert first.height.shape == first.width.shape == (c4_side, 8)
    assert second.height.shape == second.width.shape == (pooled_side, 8)
    if c4_side % 2:  # the official floor-mode pool would crash here (5 -> 2 vs the shortcut's 3)
        with torch.no_grad():
            out = m(torch.randn(2, 3, img_size, img_size), torch.randn(2, 3, img_size, img_size))
        assert torch.isfinite(out.total)


def test_relative_tables_cover_every_offset() -> None:
    m = CARE("resnet18", img_size=96, pos_embed="relative", **TINY)
    first, second = (blk.attn.pos for blk in m.transformer.blocks)
    assert first.rel_height.shape == first.rel_width.shape == (2 * 6 - 1, 8)
    assert second.rel_height.shape == (2 * 3 - 1, 8)


def test_non_square_maps() -> None:
    t = TStream(16, 32, (3, 5), depth=2, heads=2, dim_head=4)
    assert t(torch.randn(2, 16, 3, 5)).shape == (2, 32, 2, 3)
    t = TStream(16, 32, (3, 5), depth=2, heads=2, dim_head=4, pos_embed="relative")
    assert t(torch.randn(2, 16, 3, 5)).shape == (2, 32, 2, 3)


def test_relative_logits_depend_only_on_offsets() -> None:
    """q p^T for a constant query: equal for every (query, key) pair with the same 2-D offset."""
    attn = MHSA(4, (3, 4), heads=1, dim_head=2, pos_embed="relative")
    q = torch.ones(1, 1, 12, 2)
    with torch.no_grad():
        logits = attn.pos(q)[0, 0].reshape(3, 4, 3, 4)
    # offset (+1, +1) from (0, 0) and from (1, 2); offset (-2, -3) from (2, 3)
    assert logits[0, 0, 1, 1] == pytest.approx(logits[1, 2, 2, 3].item())
    r_h, r_w = attn.pos.rel_height.detach(), attn.pos.rel_width.detach()
    assert logits[2, 3, 0, 0] == pytest.approx((r_h[0] + r_w[0]).sum().item(), abs=1e-6)


def test_absolute_logits_are_q_dot_row_plus_column_tables() -> None:
    attn = MHSA(4, (2, 3), heads=1, dim_head=2)
    q = torch.randn(1, 1, 6, 2)
    with torch.no_grad():
        logits = attn.pos(q)[0, 0]
    h, w = attn.pos.height.detach(), attn.pos.width.detach()
    # key at (row 1, col 2) is token 5
    torch.testing.assert_close(logits[:, 5], q[0, 0] @ (h[1] + w[2]))


def test_wrong_input_size_fails_clearly() -> None:
    m = CARE("resnet18", img_size=64, **TINY)
    expected = r"built for views of shape \(B>=2, 3, 64, 64\).*got \(2, 3, 96, 96\)"
    with pytest.raises(ValueError, match=expected):
        m(torch.randn(2, 3, 96, 96), torch.randn(2, 3, 96, 96))
    with pytest.raises(ValueError, match="T-stream input must be"):
        m.transformer(torch.randn(2, 256, 6, 6))


def test_bad_knobs_fail_clearly() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        CARE("resnet18", img_size=32, mode="simclr")
    with pytest.raises(ValueError, match="design must be one of"):
        CARE("resnet18", img_size=32, design="serial")
    with pytest.raises(ValueError, match="pos_embed must be one of"):
        CARE("resnet18", img_size=32, pos_embed="sine")
    with pytest.raises(ValueError, match="at least one block"):
        TStream(8, 8, (2, 2), depth=0)


def test_unknown_backbone() -> None:
    with pytest.raises(BackboneError, match="unknown backbone 'resnet_does_not_exist'"):
        CARE("resnet_does_not_exist", img_size=32)


def test_backbone_without_stage_4_features() -> None:
    # a plain ViT keeps stride 16 throughout: no stride-32 stage, so no C5 for the T-stream to run beside
    with pytest.raises(BackboneError, match=r"no stage-4 \(stride 16\) and stage-5 \(stride 32\).*\[16, 16"):
        CARE("vit_tiny_patch16_224", img_size=32)
    assert issubclass(BackboneError, ValueError)


def test_resnet50_t_stream_size_and_cost_match_the_spec() -> None:
    """Official configuration off ResNet-50's C4 (1024 x 14 x 14 at 224 px): 32.8M parameters, 1.87 GMACs,
    of which the first block's 3x3 stride-2 shortcut is 0.92 (spec "Cost")."""
    from torch.utils.flop_counter import FlopCounterMode

    t = TStream(1024, 2048, (14, 14), depth=5)
    assert sum(p.numel() for p in t.parameters()) / 1e6 == pytest.approx(32.8, abs=0.05)
    x = torch.randn(1, 1024, 14, 14)
    with torch.no_grad():
        with FlopCounterMode(display=False) as total:
            assert t(x).shape == (1, 2048, 7, 7)
        with FlopCounterMode(display=False) as shortcut:
            t.blocks[0].shortcut(x)
    assert total.get_total_flops() / 2e9 == pytest.approx(1.87, abs=0.01)
    assert shortcut.get_total_flops() / 2e9 == pytest.approx(0.92, abs=0.01)
