"""BYOL's asymmetric augmentations (Grill et al., 2020, Table 6), as CARE uses them (Sec. 4), in torch ops.

Both views: random resized crop, horizontal flip (p 0.5), colour jitter (p 0.8: brightness 0.4, contrast
0.4, saturation 0.2, hue 0.1, in random order), grayscale (p 0.2). View 1: Gaussian blur always, never
solarised; view 2: blur with p 0.1, solarise with p 0.2. Blur sigma is BYOL's 0.1-2.0 px at 224 px,
scaled to the image side. Images are (C, H, W) floats in [0, 1]; every draw comes from the generator
passed in, so an augmented sample depends only on (seed, epoch, index) and resumes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ctxnets_shared.training.transforms import (
    Compose,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Transform,
)

__all__ = ["ColorJitter", "GaussianBlur", "RandomGrayscale", "Solarize", "TwoViews", "byol_views"]

_LUMA = (0.299, 0.587, 0.114)


def _rand(g: torch.Generator | None) -> float:
    return float(torch.rand((), generator=g))


def _gray(img: torch.Tensor) -> torch.Tensor:
    """(3, H, W) -> (1, H, W) luma."""
    w = img.new_tensor(_LUMA).view(3, 1, 1)
    return (img * w).sum(0, keepdim=True)


class ColorJitter(Transform):
    """Random brightness, contrast, saturation and hue factors applied in a random order, with prob. ``p``.

    Hue is a rotation of the chroma plane in YIQ space by up to ``hue`` of a full turn (a torch-only
    stand-in for an HSV hue shift). Saturation and hue need three channels and are skipped otherwise.
    """

    def __init__(
        self,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.1,
        p: float = 0.8,
    ) -> None:
        if min(brightness, contrast, saturation, hue) < 0 or hue > 0.5 or not 0 <= p <= 1:
            raise ValueError("jitter strengths must be >= 0 (hue <= 0.5) and p in [0, 1]")
        self.brightness, self.contrast, self.saturation, self.hue, self.p = (
            brightness,
            contrast,
            saturation,
            hue,
            p,
        )

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if _rand(generator) >= self.p:
            return img
        order = torch.randperm(4, generator=generator).tolist()
        factors = [
            1 + s * (2 * _rand(generator) - 1) for s in (self.brightness, self.contrast, self.saturation)
        ]
        shift = self.hue * (2 * _rand(generator) - 1)
        color = img.shape[0] == 3
        for op in order:
            if op == 0:
                img = img * factors[0]
            elif op == 1:
                mean = (_gray(img) if color else img).mean()
                img = (img - mean) * factors[1] + mean
            elif op == 2 and color:
                gray = _gray(img)
                img = (img - gray) * factors[2] + gray
            elif op == 3 and color and shift != 0:
                img = _rotate_hue(img, shift)
            img = img.clamp(0, 1)
        return img


def _rotate_hue(img: torch.Tensor, turns: float) -> torch.Tensor:
    to_yiq = img.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    c, s = math.cos(2 * math.pi * turns), math.sin(2 * math.pi * turns)
    rot = img.new_tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    m = torch.linalg.inv(to_yiq) @ rot @ to_yiq
    return torch.einsum("ij,jhw->ihw", m, img)


class RandomGrayscale(Transform):
    """Replace every channel by the luma with probability ``p`` (three-channel images only)."""

    def __init__(self, p: float = 0.2) -> None:
        self.p = p

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if _rand(generator) < self.p and img.shape[0] == 3:
            return _gray(img).expand_as(img).clone()
        return img


class GaussianBlur(Transform):
    """Separable Gaussian blur with sigma ~ U(sigma_range) * img_side / 224, with probability ``p``."""

    def __init__(self, p: float, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.p, self.sigma = p, sigma

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if _rand(generator) >= self.p:
            return img
        side = max(img.shape[-2:])
        sigma = (self.sigma[0] + (self.sigma[1] - self.sigma[0]) * _rand(generator)) * side / 224
        radius = max(1, min(math.ceil(3 * sigma), side // 2 - 1))
        x = torch.arange(-radius, radius + 1, dtype=img.dtype)
        k = torch.exp(-(x**2) / (2 * sigma**2))
        k = k / k.sum()
        c = img.shape[0]
        out = F.pad(img[None], (radius, radius, radius, radius), mode="reflect")
        out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        out = F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        return out[0]


class Solarize(Transform):
    """Invert pixels at or above ``threshold`` with probability ``p``."""

    def __init__(self, p: float, threshold: float = 0.5) -> None:
        self.p, self.threshold = p, threshold

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if _rand(generator) < self.p:
            return torch.where(img >= self.threshold, 1 - img, img)
        return img


class TwoViews(Transform):
    """One image -> (2, C, H, W): a view from each pipeline, drawn from the same generator."""

    def __init__(self, view1: Transform, view2: Transform) -> None:
        self.view1, self.view2 = view1, view2

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.stack([self.view1(img, generator), self.view2(img, generator)])


def byol_views(
    img_size: int,
    *,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
) -> TwoViews:
    """BYOL's two asymmetric pipelines (view 1: blur 1.0, solarise 0; view 2: blur 0.1, solarise 0.2)."""

    def pipeline(blur: float, solarize: float) -> Compose:
        return Compose(
            [
                RandomResizedCrop(img_size, scale=scale),
                RandomHorizontalFlip(hflip),
                ColorJitter(),
                RandomGrayscale(0.2),
                GaussianBlur(blur),
                Solarize(solarize),
                Normalize(mean, std),
            ]
        )

    return TwoViews(pipeline(1.0, 0.0), pipeline(0.1, 0.2))
