"""Every workspace package is found through its entry point, and the ctxnets command sees them."""

from __future__ import annotations

import shutil
import subprocess

import timm

from ctxnets_shared import discover_packages

EXPECTED = {
    "cotnet": "cot",
    "gcnet": "gcnet",
    "care-ssl": "care_ssl",
    "hiri-vit": "hiri_vit",
    "container": "container",
}
COT_MODELS = {
    "cotnet50",
    "cotnet101",
    "cotnext50_2x48d",
    "cotnext101_2x48d",
    "se_cotnetd_50",
    "se_cotnetd_101",
    "se_cotnetd_152",
}


def test_all_packages_discovered() -> None:
    pkgs = discover_packages(refresh=True)
    assert {d: p.import_name for d, p in pkgs.items()} == EXPECTED
    assert set(pkgs["cotnet"].models) == COT_MODELS
    for pkg in pkgs.values():
        for m in pkg.models:
            assert timm.is_model(m), m


def test_model_names_do_not_collide_across_packages() -> None:
    seen: dict[str, str] = {}
    for pkg in discover_packages().values():
        for m in pkg.models:
            assert m not in seen, f"{m} registered by {seen[m]} and {pkg.distribution}"
            seen[m] = pkg.distribution


def test_console_script_lists_everything() -> None:
    exe = shutil.which("ctxnets")
    assert exe
    out = subprocess.run([exe, "list"], capture_output=True, text=True, check=True, timeout=300).stdout
    for dist in EXPECTED:
        assert f"{dist} 0.1.0" in out
    assert "cotnet50" in out
