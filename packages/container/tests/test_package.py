"""The skeleton's promises: it imports, declares its version, and is found through its entry point."""

from importlib.metadata import version

import container
from ctxnets_shared import discover_packages


def test_version_matches_metadata() -> None:
    assert container.__version__ == version("container") == "0.1.0"


def test_found_through_entry_point() -> None:
    pkg = discover_packages(refresh=True)["container"]
    assert pkg is container.CTXNETS_PACKAGE
    assert pkg.import_name == "container"
