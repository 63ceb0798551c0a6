"""The package imports, declares its version, and is found through its entry point."""

from importlib.metadata import version

import gcnet
from ctxnets_shared import discover_packages


def test_version_matches_metadata() -> None:
    assert gcnet.__version__ == version("gcnet")


def test_found_through_entry_point() -> None:
    pkg = discover_packages(refresh=True)["gcnet"]
    assert pkg is gcnet.CTXNETS_PACKAGE
    assert pkg.import_name == "gcnet"
    assert isinstance(pkg.converter, gcnet.MMDetGCNetConverter)
