"""Model plumbing: feature indices and input checks (ctxnets_shared.models)."""

from __future__ import annotations

import pytest
import torch

from ctxnets_shared.models import check_image_input, feature_take_indices


@pytest.mark.parametrize(
    ("indices", "expected"),
    [(None, ([0, 1, 2, 3], 3)), (2, ([2, 3], 3)), ([0, -1], ([0, 3], 3)), ((1,), ([1], 1))],
)
def test_feature_take_indices(indices: object, expected: tuple[list[int], int]) -> None:
    assert feature_take_indices(4, indices) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("indices", [0, 5, [4], [-5]])
def test_feature_take_indices_out_of_range(indices: object) -> None:
    with pytest.raises(ValueError, match="out of range"):
        feature_take_indices(4, indices)  # type: ignore[arg-type]


def test_check_image_input() -> None:
    check_image_input(torch.zeros(1, 3, 32, 32), 3, 32)
    with pytest.raises(ValueError, match="expected 3 input channels.*got 1"):
        check_image_input(torch.zeros(1, 1, 32, 32), 3, 32)
    with pytest.raises(ValueError, match="16x40 is smaller than the network stride.*at least 32"):
        check_image_input(torch.zeros(1, 3, 16, 40), 3, 32)
    with pytest.raises(ValueError, match="4-D"):
        check_image_input(torch.zeros(3, 32, 32), 3, 32)
    scripted = torch.jit.script(check_image_input)
    with pytest.raises(Exception, match="smaller than the network stride"):
        scripted(torch.zeros(1, 3, 8, 8), 3, 32)
