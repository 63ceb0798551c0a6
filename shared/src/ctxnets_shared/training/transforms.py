"""Image transforms on (C, H, W) float tensors, written with torch ops (no torchvision).

Every random transform draws from an explicit ``torch.Generator`` passed at call time, never from the
global RNG: :class:`~ctxnets_shared.training.data.AugmentedDataset` seeds that generator from
(seed, epoch, sample index), so an augmented sample is the same whatever the number of data-loader workers
and whether the run was resumed, which is what exact resume needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "CenterCrop",
    "Compose",
    "Normalize",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Resize",
    "Transform",
    "build_transform",
]


class Transform:
    """A transform: ``t(img, generator) -> img`` on a (C, H, W) float tensor."""

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(img.shape[-2:]) == size:
        return img
    # antialias only matters (and is only supported) when shrinking with bilinear filtering
    shrink = size[0] < img.shape[-2] or size[1] < img.shape[-1]
    out = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return out[0]


class Resize(Transform):
    """Resize so the shorter side is ``size`` (int), or to exactly (H, W) (pair); bilinear."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = size

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        h, w = img.shape[-2:]
        if isinstance(self.size, int):
            scale = self.size / min(h, w)
            target = (max(1, round(h * scale)), max(1, round(w * scale)))
        else:
            target = (int(self.size[0]), int(self.size[1]))
        return _resize(img, target)


class CenterCrop(Transform):
    """Crop the central ``size`` x ``size`` window (zero-pads an image smaller than that)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        h, w = img.shape[-2:]
        pad_h, pad_w = max(0, self.size - h), max(0, self.size - w)
        if pad_h or pad_w:
            img = F.pad(img, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
            h, w = img.shape[-2:]
        top, left = (h - self.size) // 2, (w - self.size) // 2
        return img[..., top : top + self.size, left : left + self.size]


class RandomResizedCrop(Transform):
    """Crop a random area fraction in ``scale`` with aspect ratio in ``ratio`` (log-uniform), resize to size.

    The usual Inception-style crop: up to 10 tries to fit the sampled box, then a central crop with the
    nearest allowed aspect ratio.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must satisfy 0 < low <= high, got {ratio}")
        self.size, self.scale, self.ratio = size, scale, ratio

    def box(self, h: int, w: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the crop for an h x w image."""
        area = h * w
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target_area = area * _uniform(generator, *self.scale)
            aspect = math.exp(_uniform(generator, log_lo, log_hi))
            cw = round(math.sqrt(target_area * aspect))
            ch = round(math.sqrt(target_area / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (), generator=generator))
                left = int(torch.randint(0, w - cw + 1, (), generator=generator))
                return top, left, ch, cw
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            cw, ch = w, round(w / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            ch, cw = h, round(h * self.ratio[1])
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        top, left, ch, cw = self.box(img.shape[-2], img.shape[-1], generator)
        return _resize(img[..., top : top + ch, left : left + cw], (self.size, self.size))


class RandomHorizontalFlip(Transform):
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.p > 0 and float(torch.rand((), generator=generator)) < self.p:
            return img.flip(-1)
        return img


class Normalize(Transform):
    """(img - mean) / std per channel; a 3-value mean/std is averaged for a 1-channel image and vice versa."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(list(mean), dtype=torch.float32)
        self.std = torch.tensor(list(std), dtype=torch.float32)

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        c = img.shape[0]
        mean, std = self.mean, self.std
        if mean.numel() != c:
            mean, std = mean.mean().expand(c), std.mean().expand(c)
        return (img - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)


class Compose(Transform):
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for t in self.transforms:
            img = t(img, generator)
        return img


def build_transform(
    img_size: int,
    train: bool,
    *,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
    crop_pct: float = 0.875,
) -> Compose:
    """The standard classification pipeline.

    Train: random-resized-crop to ``img_size``, horizontal flip with probability ``hflip``, normalise.
    Eval: resize the shorter side to ``img_size / crop_pct``, centre crop ``img_size``, normalise.
    """
    if img_size < 1:
        raise ValueError(f"img_size must be a positive integer, got {img_size}")
    if train:
        return Compose(
            [RandomResizedCrop(img_size, scale=scale), RandomHorizontalFlip(hflip), Normalize(mean, std)]
        )
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return Compose([Resize(math.floor(img_size / crop_pct)), CenterCrop(img_size), Normalize(mean, std)])
