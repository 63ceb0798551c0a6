"""One training run per output folder: a lock file holding the owner's pid.

The lock is an ``flock`` on ``OUT/run.lock`` (POSIX): the kernel drops it when its process dies, so the
lock of a run killed with ``kill -9`` is taken over by the next start, and two live runs cannot both hold
it. The file carries the owner's pid and host for the refusal message. Where ``fcntl`` is missing the pid
alone decides: a lock whose pid no longer runs on this host is stale and taken over.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from types import TracebackType

from ctxnets_shared.training.errors import RunLockedError

__all__ = ["LOCK_NAME", "RunLock"]

LOCK_NAME = "run.lock"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class RunLock:
    """Hold ``folder/run.lock`` while training into ``folder``.

    Args:
        folder: the run's output folder (created if needed).
        enabled: False on the non-main processes of a distributed run (rank 0 locks for all).

    Raises:
        RunLockedError: on entering, when a live process holds the lock (one line naming its pid).

    Example::

        with RunLock(out, enabled=info.is_main):
            ...  # train
    """

    def __init__(self, folder: str | os.PathLike[str], *, enabled: bool = True) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.enabled = enabled
        self._fd: int | None = None

    def _owner(self) -> str:
        try:
            text = self.path.read_text().split()
        except OSError:
            return "another process"
        return f"pid {text[0]} on {text[1]}" if len(text) >= 2 else "another process"

    def _refuse(self) -> RunLockedError:
        return RunLockedError(
            f"{self.path.parent} is in use by another run ({self._owner()}): wait for it to finish, stop it, "
            f"or use another --out"
        )

    def acquire(self) -> None:
        """Take the lock (no-op when disabled)."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{os.getpid()} {socket.gethostname()}\n"
        if fcntl is None:
            self._acquire_by_pid(me)
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refuse() from None
            # the previous owner may have removed the file between our open and our flock: lock the new one
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, me.encode())
        self._fd = fd

    def _acquire_by_pid(self, me: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            text = self.path.read_text().split()
            if len(text) >= 2 and text[1] == socket.gethostname() and not _pid_alive(int(text[0])):
                self.path.unlink()  # stale: its process is gone
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise self._refuse() from None
        os.write(fd, me.encode())
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and let go (no-op when not held)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
