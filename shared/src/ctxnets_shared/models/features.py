"""Index resolution for ``forward_intermediates`` (timm's helper is private, so this is our own)."""

from __future__ import annotations

__all__ = ["feature_take_indices"]


def feature_take_indices(
    num_features: int,
    indices: int | list[int] | tuple[int, ...] | None = None,
) -> tuple[list[int], int]:
    """Resolve which of ``num_features`` feature levels to return.

    Args:
        num_features: levels available (e.g. 4 stages, or 5 with the stem).
        indices: None for all; an int n for the last n; a list of indices (negative counts from the end).

    Returns:
        (sorted absolute indices, the largest of them) so the caller can stop after that level.

    Raises:
        ValueError: an index outside ``[-num_features, num_features)`` or n outside ``[1, num_features]``.
    """
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"last-n indices={indices} is out of range: valid 1 to {num_features}")
        take = [num_features - indices + i for i in range(indices)]
    else:
        take = []
        for i in indices:
            idx = num_features + i if i < 0 else i
            if not 0 <= idx < num_features:
                raise ValueError(
                    f"feature index {i} is out of range: valid {-num_features} to {num_features - 1}"
                )
            take.append(idx)
        take = sorted(set(take))
        if not take:
            raise ValueError("indices must name at least one feature level")
    return take, max(take)
