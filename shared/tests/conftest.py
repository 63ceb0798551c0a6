"""Fixtures for ctxnets-shared tests: a fake installed ctxnets package found through a real entry point."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctxnets_shared import packages


@pytest.fixture
def fake_plugin(tmp_path: Path) -> Iterator[str]:
    """Put on sys.path a distribution ``ctxnets-fakeplug`` whose entry point registers "fakeattn"."""
    mod = tmp_path / "fakeplug.py"
    mod.write_text(
        textwrap.dedent(
            """
            import torch
            import torch.nn as nn
            from ctxnets_shared.layers import register_attn_layer
            from ctxnets_shared.packages import CtxnetsPackage

            class FakeAttn(nn.Module):
                def __init__(self, channels):
                    super().__init__()
                    self.scale = nn.Parameter(torch.ones(channels))

                def forward(self, x):
                    return x * self.scale.view(1, -1, 1, 1)

            register_attn_layer("fakeattn", FakeAttn, source="ctxnets-fakeplug")
            CTXNETS_PACKAGE = CtxnetsPackage(
                distribution="ctxnets-fakeplug",
                import_name="fakeplug",
                paper="none",
                attn_layers=("fakeattn",),
            )
            """
        )
    )
    dist = tmp_path / "ctxnets_fakeplug-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ctxnets-fakeplug\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[ctxnets.packages]\nfakeplug = fakeplug:CTXNETS_PACKAGE\n")
    sys.path.insert(0, str(tmp_path))
    packages.discover_packages(refresh=True)
    try:
        yield "fakeplug"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("fakeplug", None)
        from ctxnets_shared.layers import attn_registry

        attn_registry._REGISTRY.pop("fakeattn", None)
        packages.discover_packages(refresh=True)
