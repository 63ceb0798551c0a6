"""The errors a training command reports as one line (exit status 2), the interruption it reports with
exit status 130, and :func:`run_command`, which turns them into those statuses.

Each is a ``ValueError`` (bar :class:`TrainingInterrupted`) so a command's ``except ValueError`` prints it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from ctxnets_shared.weights.errors import CheckpointMismatchError

__all__ = ["InputSizeError", "ResumeSettingsError", "RunLockedError", "TrainingInterrupted", "run_command"]


class ResumeSettingsError(ValueError):
    """``--resume`` with a setting that changes the result different from the saved run's."""


class RunLockedError(ValueError):
    """Another live process is training into the same output folder."""


class InputSizeError(ValueError):
    """The model (or the data pipeline) cannot take the requested image size or batch."""


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training after a checkpoint of ``step`` was saved.

    Attributes:
        step: the step the saved checkpoint holds.
        announce: True on the process that should print the message (the main one).
    """

    def __init__(self, step: int, announce: bool = True) -> None:
        self.step = step
        self.announce = announce
        super().__init__(f"interrupted at step {step}; resume with --resume")


def run_command(prog: str, command: Callable[[], int]) -> int:
    """Run a training command and return its exit status, its failures reported on stderr.

    A user mistake (a ``ValueError`` or ``OSError``: flags, data, a checkpoint, a refused resume, a locked
    folder, a full disk) prints ``"{prog}: error: "`` and the message's first line (all of a
    :class:`~ctxnets_shared.weights.CheckpointMismatchError`, one key a line): status 2. SIGINT/SIGTERM
    after their checkpoint (:class:`TrainingInterrupted`), or a second Ctrl-C that abandoned the step:
    status 130.

    Args:
        prog: the command's name in messages, e.g. ``"hiri-vit train"``.
        command: runs the command; returns its exit status.
    """
    try:
        return command()
    except TrainingInterrupted as e:
        if e.announce:
            print(str(e), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted; resume with --resume (from the latest complete checkpoint)", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        lines = str(e).strip().splitlines()
        if isinstance(e, CheckpointMismatchError):
            message = "\n".join(lines)
        else:
            message = lines[0] if lines else type(e).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
