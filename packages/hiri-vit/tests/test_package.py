"""The skeleton's promises: it imports, declares its version, and is found through its entry point."""

from importlib.metadata import version

import hiri_vit
from ctxnets_shared import discover_packages


def test_version_matches_metadata() -> None:
    assert hiri_vit.__version__ == version("hiri-vit") == "0.1.0"


def test_found_through_entry_point() -> None:
    pkg = discover_packages(refresh=True)["hiri-vit"]
    assert pkg is hiri_vit.CTXNETS_PACKAGE
    assert pkg.import_name == "hiri_vit"
