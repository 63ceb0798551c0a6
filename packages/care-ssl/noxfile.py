"""nox for this package alone: ``uv run nox -s tests`` here runs its tests in a venv holding only it
and ctxnets-shared, through the root noxfile's ``tests(package='care-ssl')`` session.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nox

PACKAGE = "care-ssl"
ROOT_NOXFILE = Path(__file__).resolve().parents[2] / "noxfile.py"


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """This package's tests in their own venv (the root noxfile's ``tests(package=...)`` session)."""
    root_session = f"tests(package={PACKAGE!r})"
    session.run(
        sys.executable, "-m", "nox", "-f", str(ROOT_NOXFILE), "-s", root_session, "--", *session.posargs
    )
