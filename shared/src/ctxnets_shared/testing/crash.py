"""Crash tests for training commands: kill -9 at random moments (some in the middle of a write), then a
signal that should stop the run cleanly. A test then resumes and compares with an uninterrupted run.

The command is a list of arguments for :class:`subprocess.Popen` that writes checkpoints under
``out/checkpoints`` (:class:`ctxnets_shared.training.Checkpointer`) and takes ``--resume``. Each
subprocess runs with ``OMP_NUM_THREADS=1``, so a test that also sets one torch thread gets bitwise-equal
reductions in both runs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

__all__ = ["kill_loop", "saved_step", "stop_by_signal", "temp_files"]

_ENV = {"OMP_NUM_THREADS": "1"}


def temp_files(out: Path) -> set[Path]:
    """The unfinished writes (``*.tmp``) in ``out`` and ``out/checkpoints``."""
    return {
        p for d in (out, out / "checkpoints") if d.is_dir() for p in d.iterdir() if p.name.endswith(".tmp")
    }


def saved_step(out: Path) -> int:
    """The step of the latest complete checkpoint under ``out/checkpoints`` (0 when there is none yet)."""
    try:
        return int(json.loads((out / "checkpoints" / "latest.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return 0


def kill_loop(cmd: list[str], out: Path, kills: int, seed: int, timeout: float = 300.0) -> int:
    """Start ``cmd``, kill -9 it, restart it with ``--resume``, ``kills`` times.

    Every other kill comes the moment a new temporary file appears (a write under way); the others at a
    random moment after the run has saved a step. Each run must still be alive when killed.

    Returns:
        How many kills left an unfinished write behind.
    """
    rng, torn = random.Random(seed), 0
    for i in range(kills):
        stale, start = temp_files(out), saved_step(out)
        resume = ["--resume"] if (out / "checkpoints" / "latest.json").exists() else []
        proc = subprocess.Popen(
            [*cmd, *resume], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **_ENV}
        )
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if i % 2 == 0 and temp_files(out) - stale:
                break
            if i % 2 == 1 and saved_step(out) > start:
                time.sleep(rng.uniform(0.0, 0.15))
                break
            time.sleep(0.001)
        proc.kill()
        _, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, f"run {i} ended by itself: {err.decode()[-2000:]}"
        torn += bool(temp_files(out) - stale)
    return torn


def stop_by_signal(
    cmd: list[str], out: Path, sig: signal.Signals, timeout: float = 300.0
) -> tuple[int, str, int, int]:
    """Resume ``cmd``, send ``sig`` once it has saved a new step, and wait for it to end.

    Returns:
        (exit status, stderr, the step it resumed from, the step of the latest checkpoint it left).
    """
    start = saved_step(out)
    proc = subprocess.Popen(
        [*cmd, "--resume"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **_ENV},
    )
    while proc.poll() is None and saved_step(out) <= start:
        time.sleep(0.005)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err, start, saved_step(out)
