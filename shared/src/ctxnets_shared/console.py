"""The ``ctxnets`` console script: ``ctxnets --version`` answers before torch and timm are imported.

Importing torch takes seconds (and a CPU-only machine need not have the CUDA libraries at hand just to
ask for a version), so the script answers ``--version`` from package metadata and only then loads
:mod:`ctxnets_shared.cli` with its torch and timm imports.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ctxnets``; returns the exit status (see :func:`ctxnets_shared.cli.main`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:
        from ctxnets_shared import __version__

        print(f"ctxnets-shared {__version__}")
        return 0
    from ctxnets_shared.cli import main as run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
