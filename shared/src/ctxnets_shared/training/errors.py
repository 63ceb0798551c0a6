"""The errors a training command reports as one line (exit status 2), and the interruption it reports
with exit status 130.

Each is a ``ValueError`` (bar :class:`TrainingInterrupted`) so a command's ``except ValueError`` prints it.
"""

from __future__ import annotations

__all__ = ["InputSizeError", "ResumeSettingsError", "RunLockedError", "TrainingInterrupted"]


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
