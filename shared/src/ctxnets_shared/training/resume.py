"""Refusing a ``--resume`` whose settings would change the result of the run it continues.

A resumed run must end as the uninterrupted one would: the same learning-rate schedule, data order,
augmentation, model and loss. Both training commands save the settings that decide these in every
checkpoint and compare them here before anything is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ctxnets_shared.training.errors import ResumeSettingsError

__all__ = ["check_resume_settings"]

_MISSING = object()


def _shown(value: Any) -> str:
    if value is None:
        return "unset (the default)"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def _same(a: Any, b: Any) -> bool:
    # JSON gives back lists where the run had tuples
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def check_resume_settings(saved: Mapping[str, Any], new: Mapping[str, Any], keys: Iterable[str]) -> None:
    """Raise if any of ``keys`` differs between the saved run's settings and this run's.

    Args:
        saved: the settings stored in the checkpoint (flag name with underscores -> value).
        new: this run's settings.
        keys: the settings that change the result (learning rate, batch size, seed, epochs, model, ...).

    Raises:
        ResumeSettingsError: one line naming the first differing setting, its saved and its new value,
            e.g. ``cannot resume: --lr was 0.05 in the saved run, now 0.1``; or a setting the saved run
            does not record.
    """
    for key in keys:
        flag = "--" + key.replace("_", "-")
        old, now = saved.get(key, _MISSING), new.get(key, _MISSING)
        if old is _MISSING:
            raise ResumeSettingsError(
                f"cannot resume: the saved run does not record {flag} (a checkpoint from an older version?)"
            )
        if not _same(old, now):
            raise ResumeSettingsError(
                f"cannot resume: {flag} was {_shown(old)} in the saved run, now "
                f"{'not given' if now is _MISSING else _shown(now)} (start a new --out to change it)"
            )
