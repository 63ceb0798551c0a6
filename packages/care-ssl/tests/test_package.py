"""The skeleton's promises: it imports, declares its version, and is found through its entry point."""

from importlib.metadata import version

import care_ssl
from ctxnets_shared import discover_packages


def test_version_matches_metadata() -> None:
    assert care_ssl.__version__ == version("care-ssl") == "0.1.0"


def test_found_through_entry_point() -> None:
    pkg = discover_packages(refresh=True)["care-ssl"]
    assert pkg is care_ssl.CTXNETS_PACKAGE
    assert pkg.import_name == "care_ssl"
