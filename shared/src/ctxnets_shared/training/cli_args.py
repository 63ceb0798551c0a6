"""The flags both training commands (``hiri-vit train``, ``care-ssl pretrain``) share, spelled once.

:func:`add_run_args` adds ``--device``, ``--workers``, ``--amp/--no-amp``, ``--warmup-epochs`` and
``--no-progress`` with the same names, types and help in every command; :class:`DefaultsHelpFormatter`
makes ``--help`` show each default.
"""

from __future__ import annotations

import argparse
import re

__all__ = ["DefaultsHelpFormatter", "add_run_args", "device_flag", "resolve_device"]

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: ...)" after every option with a value and every ``--x/--no-x`` pair; an option
    whose help already says its default (an unset option's help says what happens instead), and a plain
    on-switch, are left as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        switch = action.default is False and not isinstance(action, argparse.BooleanOptionalAction)
        if action.default is None or switch or "default" in text:
            return text
        return super()._get_help_string(action) or text


def device_flag(value: str) -> str:
    """``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not _DEVICE.match(value):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def resolve_device(value: str | None) -> str | None:
    """The ``device`` argument of :func:`~ctxnets_shared.training.init_distributed`: None for ``auto``."""
    return None if value in (None, "auto") else value


def _non_negative(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def add_run_args(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    amp: bool | None = None,
    amp_help: str = "",
    warmup_epochs: float | bool | None = False,
    warmup_help: str = "",
    progress: bool = False,
) -> None:
    """Add the shared flags to a command's parser.

    ``--device`` and ``--workers`` always; ``--amp/--no-amp`` when ``amp`` is its default (True or False),
    ``--warmup-epochs`` when ``warmup_epochs`` is its default (a float, or None with ``warmup_help`` saying
    what None means), ``--no-progress`` when ``progress``.

    Args:
        parser: the (sub)command's parser.
        amp: default of ``--amp``; None leaves the flag out.
        amp_help: what ``--amp`` does (precision, where it applies).
        warmup_epochs: default of ``--warmup-epochs``; False leaves the flag out.
        warmup_help: what the warm-up is and any cap.
        progress: add ``--no-progress``.
    """
    a = parser.add_argument
    a(
        "--device",
        type=device_flag,
        default="auto",
        metavar="{auto,cpu,cuda,cuda:N}",
        help="auto: CUDA when available, else the CPU; under torchrun each process takes cuda:LOCAL_RANK",
    )
    a("--workers", type=_non_negative, default=0, help="DataLoader worker processes (per process)")
    if amp is not None:
        a("--amp", action=argparse.BooleanOptionalAction, default=amp, help=amp_help)
    if warmup_epochs is not False:
        a("--warmup-epochs", type=float, default=warmup_epochs, help=warmup_help)
    if progress:
        a("--no-progress", action="store_true", help="no progress bar")
