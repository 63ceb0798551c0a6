"""The blocks against direct formula references (specs/hiri-vit.md "Blocks"; paper Eq. 3, Figs. 3-5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hiri_vit import CFFN, CFFNBlock, HRBlock, HRStem, IRDSa, IRDSb, MultiHeadAttention, TransformerBlock
from hiri_vit.conv_norm_act import ConvNormAct
from hiri_vit.heads import AvgPoolHead, ClassAttentionHead


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial norms (running stats, affine) so a reference that skips one would differ."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.1
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.5
    return module.eval()


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (x - bn.running_mean.view(shape)) * scale.view(shape) + bn.bias.view(shape)


def _repeat2(x: torch.Tensor) -> torch.Tensor:
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
def test_hr_block_equals_formula(size):
    """x + DW3x3(n) + crop(Up2(FFN(BN(DW3x3/2(n))))), n = BN(x); odd sides crop the repeated map."""
    c, e = 8, 4
    block = _randomise(HRBlock(c, mlp_ratio=e))
    x = torch.randn(2, c, *size)
    n = _bn(x, block.norm)
    high = F.conv2d(n, block.high.weight, block.high.bias, padding=1, groups=c)
    low = F.conv2d(n, block.low_down.weight, block.low_down.bias, stride=2, padding=1, groups=c)
    low = _bn(low, block.low_norm)
    ffn = block.low_ffn
    low = F.conv2d(F.gelu(F.conv2d(low, ffn.fc1.weight, ffn.fc1.bias)), ffn.fc2.weight, ffn.fc2.bias)
    assert low.shape[-2:] == ((size[0] + 1) // 2, (size[1] + 1) // 2)
    expected = x + high + _repeat2(low)[:, :, : size[0], : size[1]]
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)


def test_cffn_is_eq3():
    """CFFN(X) = FC(DWConv(z) + z), z = GELU(FC(X)) (paper Eq. 3), as per-position matmuls."""
    ffn = CFFN(6, 24).eval()
    x = torch.randn(2, 6, 5, 7)
    tokens = x.permute(0, 2, 3, 1)
    z = F.gelu(tokens @ ffn.fc1.weight[:, :, 0, 0].T + ffn.fc1.bias)
    zc = z.permute(0, 3, 1, 2)
    dw = F.conv2d(zc, ffn.dwconv.weight, ffn.dwconv.bias, padding=1, groups=24)
    out = (dw + zc).permute(0, 2, 3, 1) @ ffn.fc2.weight[:, :, 0, 0].T + ffn.fc2.bias
    with torch.no_grad():
        torch.testing.assert_close(ffn(x), out.permute(0, 3, 1, 2))


@pytest.mark.parametrize("sr_ratio", [1, 2])
def test_sdpa_equals_formula(sr_ratio):
    torch.manual_seed(0)
    fused = MultiHeadAttention(64, 2, sr_ratio=sr_ratio, fused_attn=True).eval()
    plain = MultiHeadAttention(64, 2, sr_ratio=sr_ratio, fused_attn=False).eval()
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 4, 6, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x), rtol=1e-5, atol=1e-5)


def test_fused_attn_default_follows_timm(monkeypatch):
    """As timm's own Attention: None reads ``timm.layers.use_fused_attn()`` at construction."""
    import timm.layers.config as timm_config

    monkeypatch.setattr(timm_config, "_USE_FUSED_ATTN", 0)
    assert not MultiHeadAttention(64, 1).fused_attn
    assert not ClassAttentionHead(64, 10, num_heads=1).block.attn.fused_attn
    assert MultiHeadAttention(64, 1, fused_attn=True).fused_attn
    monkeypatch.setattr(timm_config, "_USE_FUSED_ATTN", 1)
    assert MultiHeadAttention(64, 1).fused_attn and ClassAttentionHead(64, 10, 1).block.attn.fused_attn


def test_attention_matches_reference_softmax():
    """MHA over all tokens: softmax(q k^T / sqrt(64)) v per head, then the output projection."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(128, 2).eval()
    x = torch.randn(1, 3, 5, 128)
    t = x.flatten(1, 2)
    q, k, v = (t @ attn.qkv.weight.T + attn.qkv.bias).chunk(3, dim=-1)
    outs = []
    for h in range(2):
        sl = slice(64 * h, 64 * (h + 1))
        a = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / 8.0, dim=-1)
        outs.append(a @ v[..., sl])
    ref = torch.cat(outs, -1) @ attn.proj.weight.T + attn.proj.bias
    with torch.no_grad():
        torch.testing.assert_close(attn(x), ref.reshape(1, 3, 5, 128), rtol=1e-5, atol=1e-5)


def test_transformer_block_norms():
    """LayerNorm before the attention, BatchNorm before the CFFN (paper Sec. 5.3)."""
    block = _randomise(TransformerBlock(64, 1, mlp_ratio=2))
    assert isinstance(block.norm1, nn.LayerNorm) and isinstance(block.norm2, nn.BatchNorm2d)
    x = torch.randn(2, 3, 5, 64)
    with torch.no_grad():
        y = x + block.attn(block.norm1(x))
        expected = y + block.mlp(_bn(y.permute(0, 3, 1, 2), block.norm2)).permute(0, 2, 3, 1)
        torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("side", [64, 65, 66])
def test_stem_and_irds_sizes(side):
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        s = HRStem(3, 16).eval()(x)
        assert s.shape[-1] == -(-side // 4)
        a = IRDSa(16, 24).eval()(s)
        b = IRDSb(24, 32).eval()(a)
    assert a.shape[-1] == -(-s.shape[-1] // 2) and b.shape[-1] == -(-a.shape[-1] // 2)
    assert (a.shape[1], b.shape[1]) == (24, 32)


def test_irds_shortcut_and_norm_placement():
    """IRDS-b: norm + activation only after the first conv; both IRDS add the pooled 1x1 shortcut."""
    irds = _randomise(IRDSb(8, 16))
    x = torch.randn(2, 8, 6, 6)
    main = irds.conv2(irds.dwconv(F.gelu(_bn(F.conv2d(x, irds.conv1[0].weight), irds.conv1[1]))))
    short = F.conv2d(F.avg_pool2d(x, 2), irds.shortcut[1].weight)
    with torch.no_grad():
        torch.testing.assert_close(irds(x), main + short)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in [irds.dwconv, irds.conv2])


def test_irds_bad_stride():
    with pytest.raises(ValueError, match="1 or 2"):
        IRDSa(8, 16, stride=3)


def test_class_attention_head():
    """The class token starts as the token mean and attends to [cls, tokens]; heads share LN and fc."""
    head = _randomise(ClassAttentionHead(64, 10, num_heads=1, mlp_ratio=2))
    x = torch.randn(2, 64, 3, 3)
    tokens = x.flatten(2).transpose(1, 2)
    blk = head.block
    cls = tokens.mean(1, keepdim=True)
    seq = blk.norm1(torch.cat([cls, tokens], 1))
    q = blk.attn.q(seq[:, :1])
    k, v = blk.attn.kv(seq).chunk(2, -1)
    cls = cls + blk.attn.proj(torch.softmax(q @ k.transpose(1, 2) / 8.0, -1) @ v)
    cls = cls + blk.mlp(blk.norm2(cls))
    with torch.no_grad():
        torch.testing.assert_close(head(x), head.fc(head.norm(cls[:, 0])), rtol=1e-5, atol=1e-5)
        dense = head.forward_dense(x)
        assert dense.shape == (2, 10, 3, 3)
        torch.testing.assert_close(dense[:, :, 1, 2], head.fc(head.norm(x[:, :, 1, 2])))
    avg = _randomise(AvgPoolHead(64, 10))
    with torch.no_grad():
        torch.testing.assert_close(avg(x), avg.fc(avg.norm(tokens.mean(1))))
    with pytest.raises(ValueError, match="global_pool"):
        AvgPoolHead(64, 10, global_pool="class_attn")


def test_conv_norm_act_keys_and_shape():
    """Numbered children: the state-dict keys of the stem and IRDS convs are ``<name>.0.weight``, ..."""
    m = ConvNormAct(8, 16, 3, stride=2, act_layer=nn.ReLU)
    assert [k for k, _ in m.named_children()] == ["0", "1", "2"]
    assert isinstance(m[1], nn.BatchNorm2d) and isinstance(m[2], nn.ReLU) and m[0].bias is None
    assert m(torch.randn(2, 8, 9, 9)).shape == (2, 16, 5, 5)
    assert m[0].padding == (1, 1) and ConvNormAct(8, 8)(torch.randn(1, 8, 4, 5)).shape == (1, 8, 4, 5)


_CONV_BLOCKS = {
    "hr_stem": lambda: HRStem(3, 16),
    "hr_block": lambda: HRBlock(16),
    "irds_a": lambda: IRDSa(16, 24),
    "irds_b": lambda: IRDSb(16, 24),
    "cffn": lambda: CFFN(16, 48),
    "cffn_block": lambda: CFFNBlock(16, attn_layer="se"),
}


@pytest.mark.parametrize("name", list(_CONV_BLOCKS))
@pytest.mark.parametrize("train", [False, True])
def test_conv_blocks_keep_the_input_memory_format(name, train):
    """NCHW in -> NCHW out, channels-last in -> channels-last out, the same values (odd sides too)."""
    torch.manual_seed(0)
    block = _randomise(_CONV_BLOCKS[name]()).train(train)
    x = torch.randn(3, 3 if name == "hr_stem" else 16, 9, 7)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    y, y_cl = block(x), block(x_cl)
    assert y.is_contiguous()
    assert y_cl.is_contiguous(memory_format=torch.channels_last) and not y_cl.is_contiguous()
    torch.testing.assert_close(y_cl, y, rtol=1e-5, atol=1e-5)
