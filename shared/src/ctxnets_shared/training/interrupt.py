"""Stopping training cleanly on SIGINT (Ctrl-C) or SIGTERM.

:class:`StopOnSignal` turns the first signal into a request that the training loop reads between steps:
the step under way finishes, a checkpoint of it is written, and the loop raises
:class:`~ctxnets_shared.training.errors.TrainingInterrupted`, which the command reports as "interrupted at
step N; resume with --resume" with exit status 130. No write is cut off part-way: checkpoints are written
between steps. A second signal stops at once (``KeyboardInterrupt``);
:func:`~ctxnets_shared.weights.atomic_write` then removes its temporary file, and the previous checkpoint
stays.

Under torchrun every rank gets the signal, perhaps at different steps; :meth:`StopOnSignal.requested`
agrees across ranks (any rank asked) so all of them stop after the same step.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

import torch
import torch.distributed as dist

from ctxnets_shared.training.distributed import DistInfo

__all__ = ["StopOnSignal"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal:
    """Within the block, SIGINT/SIGTERM ask the loop to stop after the current step (a second one aborts).

    Handlers are installed only in the main thread (Python's rule) and restored on exit.

    Example::

        with StopOnSignal() as stop:
            for step ...:
                train_step()
                if stop.requested(info):
                    ckpt.save(step, ...)
                    raise TrainingInterrupted(step, announce=info.is_main)
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # asked twice: give up the current step and write
        self.signum = signum

    def requested(self, info: DistInfo | None = None) -> bool:
        """Whether any process got a signal (a collective when distributed: call it on every rank)."""
        asked = self.signum is not None
        if info is not None and info.distributed:
            flag = torch.tensor([1.0 if asked else 0.0], device=info.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            asked = bool(flag.item() > 0)
        return asked

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
