"""Integration tests run with every workspace package installed (nox -s integration)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    """scikit-learn's bundled sample photograph (427x640 RGB), no download."""
    return Image.fromarray(np.asarray(load_sample_image("china.jpg")))


@pytest.fixture(scope="session")
def photo_batch(photo: Image.Image) -> torch.Tensor:
    """The photo through timm's eval transform for a 224 ImageNet model: (1, 3, 224, 224)."""
    from timm.data import create_transform

    tf = create_transform(input_size=(3, 224, 224), interpolation="bicubic", crop_pct=0.875)
    return tf(photo).unsqueeze(0)
