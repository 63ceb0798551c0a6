"""An independent re-statement of the released CONTAINER-LIGHT (allenai/container ``models.py``) for tests.

Module names are the official ones (so its state dict is the official checkpoint layout, specs/container.md)
and the forward follows the released code's order of operations: token-major LayerNorm in the patch
embeddings, ``[q | k | v]`` split as ``(B, N, 3, heads, d)``, the mix on the branches' outputs, the mean
over positions before the head. Written for these tests, not copied.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Embed(nn.Module):
    def __init__(self, cin: int, dim: int, patch: int) -> None:
        super().__init__()
        self.norm, self.proj = nn.LayerNorm(dim), nn.Conv2d(cin, dim, patch, stride=patch)

    def forward(self, x):
        x = self.proj(x)
        b, c, h, w = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)).reshape(b, h, w, c).permute(0, 3, 1, 2)


class _ConvBlock(nn.Module):  # the official CBlock
    def __init__(self, dim: int, ratio: int) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1, self.norm2 = nn.BatchNorm2d(dim), nn.BatchNorm2d(dim)
        self.conv1, self.conv2 = nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.mlp = _Mlp(dim, dim * ratio)

    def forward(self, x):
        x = x + self.pos_embed(x)
        x = x + self.conv2(self.attn(self.conv1(self.norm1(x))))
        return x + self.mlp(self.norm2(x))


class _MixBlock(nn.Module):  # the official MixBlock
    def __init__(self, dim: int, ratio: int, heads: int) -> None:
        super().__init__()
        self.dim, self.heads = dim, heads
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1, self.norm2 = nn.BatchNorm2d(dim), nn.BatchNorm2d(dim)
        self.conv1, self.conv2 = nn.Conv2d(dim, 3 * dim, 1), nn.Conv2d(dim, dim, 1)
        self.conv = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.mlp = _Mlp(dim, dim * ratio)
        self.sa_weight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        x = x + self.pos_embed(x)
        b, c, h, w = x.shape
        qkv = self.conv1(self.norm1(x))
        conv = self.conv(qkv[:, 2 * c :])
        t = (
            qkv.flatten(2)
            .transpose(1, 2)
            .reshape(b, h * w, 3, self.heads, c // self.heads)
            .permute(2, 0, 3, 1, 4)
        )
        attn = (t[0] @ t[1].transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1)
        sa = (attn @ t[2]).transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)
        g = torch.sigmoid(self.sa_weight)
        x = x + self.conv2(g * sa + (1 - g) * conv)
        return x + self.mlp(self.norm2(x))


class OfficialContainerLight(nn.Module):
    """dims 64/128/320/512, depths 3/4/8/3, MLP ratios 8/8/4/4, 16 heads in stage 4."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        dims, depths, ratios = (64, 128, 320, 512), (3, 4, 8, 3), (8, 8, 4, 4)
        cin = 3
        for s in range(4):
            setattr(self, f"patch_embed{s + 1}", _Embed(cin, dims[s], 4 if s == 0 else 2))
            blocks = [
                _MixBlock(dims[s], ratios[s], 16) if s == 3 else _ConvBlock(dims[s], ratios[s])
                for _ in range(depths[s])
            ]
            setattr(self, f"blocks{s + 1}", nn.ModuleList(blocks))
            cin = dims[s]
        self.norm = nn.BatchNorm2d(512)
        self.head = nn.Linear(512, num_classes)

    def forward(self, x):
        for s in range(1, 5):
            x = getattr(self, f"patch_embed{s}")(x)
            for blk in getattr(self, f"blocks{s}"):
                x = blk(x)
        return self.head(self.norm(x).flatten(2).mean(-1))
