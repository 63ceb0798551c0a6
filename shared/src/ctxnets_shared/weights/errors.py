"""Errors raised when weights cannot be read or do not fit a model."""

from __future__ import annotations

__all__ = [
    "CheckpointMismatchError",
    "UnsafeCheckpointError",
    "WeightsFileError",
    "WeightsNotDownloadableError",
]


class WeightsFileError(ValueError):
    """A weights file is missing, truncated, corrupted or of an unsupported format."""


class UnsafeCheckpointError(WeightsFileError):
    """A pickled checkpoint that needs arbitrary code execution to load; it is refused, never executed."""


class WeightsNotDownloadableError(WeightsFileError):
    """Official weights published only behind a web page (Google Drive, Baidu): the message says where
    to fetch the file and how to pass it (``pretrained_cfg_overlay=dict(file=...)``)."""


class CheckpointMismatchError(ValueError):
    """A state dict whose keys or shapes do not match the model; lists every offending key."""

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        context: str = "checkpoint",
    ) -> None:
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        lines = [
            f"{context} does not match the model: {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} mis-shaped key(s)"
        ]
        lines += [f"  missing:     {k}" for k in missing]
        lines += [f"  unexpected:  {k}" for k in unexpected]
        lines += [f"  mis-shaped:  {k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in mismatched]
        super().__init__("\n".join(lines))
