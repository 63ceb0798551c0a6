"""BYOL's asymmetric augmentations in torch ops: deterministic per generator, the documented effects."""

from __future__ import annotations

import torch

from care_ssl.augment import ColorJitter, GaussianBlur, RandomGrayscale, Solarize, byol_views


def image(seed: int = 0, chans: int = 3, size: int = 40) -> torch.Tensor:
    return torch.rand(chans, size, size, generator=torch.Generator().manual_seed(seed))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_two_views_are_reproducible_from_the_generator_alone() -> None:
    t = byol_views(32)
    a, b = t(image(), gen(5)), t(image(), gen(5))
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, t(image(), gen(6)))
    assert not torch.equal(a[0], a[1])


def test_solarize_inverts_bright_pixels_only() -> None:
    img = torch.tensor([[[0.2, 0.5, 0.9]]])
    assert torch.allclose(Solarize(p=1.0)(img, gen(0)), torch.tensor([[[0.2, 0.5, 0.1]]]))
    assert torch.equal(Solarize(p=0.0)(img, gen(0)), img)


def test_blur_keeps_the_mean_and_smooths() -> None:
    img = image(size=224)
    out = GaussianBlur(p=1.0, sigma=(2.0, 2.0))(img, gen(0))
    assert out.shape == img.shape
    assert abs(float(out.mean() - img.mean())) < 1e-2
    assert out.std() < 0.6 * img.std()  # sigma 2 px averages i.i.d. noise strongly


def test_grayscale_and_jitter_keep_range_and_handle_one_channel() -> None:
    gray = RandomGrayscale(p=1.0)(image(), gen(0))
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    for chans in (1, 3):
        out = ColorJitter(p=1.0)(image(chans=chans), gen(1))
        assert out.shape == (chans, 40, 40) and out.min() >= 0 and out.max() <= 1
    # hue rotation leaves a gray image gray (it only turns the chroma plane)
    hue_only = ColorJitter(brightness=0, contrast=0, saturation=0, hue=0.5, p=1.0)
    torch.testing.assert_close(hue_only(gray, gen(2)), gray, atol=1e-5, rtol=0)
