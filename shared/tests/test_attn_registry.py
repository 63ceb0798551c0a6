"""The attention registry resolves timm names, registered names, callables and None."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from timm.layers import EcaModule, SEModule
from timm.layers.cbam import CbamModule

from ctxnets_shared.layers import (
    UnknownAttnLayerError,
    attn_registry,
    create_attn_layer,
    list_attn_layers,
    register_attn_layer,
    reset_attn_layers,
    resolve_attn_layer,
)


@pytest.mark.parametrize(("name", "cls"), [("se", SEModule), ("eca", EcaModule), ("cbam", CbamModule)])
def test_timm_names(name: str, cls: type) -> None:
    m = create_attn_layer(name, 64)
    assert isinstance(m, cls)
    x = torch.randn(2, 64, 7, 7)
    assert m(x).shape == x.shape


def test_every_listed_timm_name_builds_from_channels() -> None:
    x = torch.randn(2, 32, 14, 14)  # "bat" needs sides divisible by its block size 7
    for name in attn_registry.TIMM_ATTN_NAMES:
        m = create_attn_layer(f"timm.{name}", 32)
        assert m is not None and m.eval()(x).shape == x.shape, name


def test_none_and_empty() -> None:
    assert create_attn_layer(None, 64) is None
    assert create_attn_layer("none", 64) is None
    assert resolve_attn_layer("") is None


def test_callable_passes_through() -> None:
    made: list[int] = []

    def factory(channels: int) -> nn.Module:
        made.append(channels)
        return nn.Identity()

    assert isinstance(create_attn_layer(factory, 48), nn.Identity)
    assert made == [48]


def test_registered_name_shadows_and_is_listed() -> None:
    class Tagged(nn.Module):
        def __init__(self, channels: int, tag: str = "x") -> None:
            super().__init__()
            self.channels, self.tag = channels, tag

    register_attn_layer("tagged_test", Tagged, source="tests")
    try:
        m = create_attn_layer("Tagged_Test", 16, tag="y")
        assert isinstance(m, Tagged) and (m.channels, m.tag) == (16, "y")
        assert list_attn_layers()["tagged_test"] == "tests"
        with pytest.raises(ValueError, match="already registered"):
            register_attn_layer("tagged_test", Tagged, source="someone-else")
    finally:
        attn_registry._REGISTRY.pop("tagged_test", None)


def test_reset_attn_layers_restores_registered_modules_init_only() -> None:
    class ZeroInit(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(channels, channels, 1)
            self.reset_parameters()

        def reset_parameters(self) -> None:
            nn.init.zeros_(self.conv.weight)

    register_attn_layer("zero_init_test", ZeroInit, source="tests")
    try:
        host = nn.Sequential(
            create_attn_layer("zero_init_test", 8), create_attn_layer("se", 8), create_attn_layer(ZeroInit, 8)
        )
        se_before = host[1].fc1.weight.detach().clone()
        for m in host.modules():  # a host's init reaching every conv, as cot's and hiri-vit's do
            if isinstance(m, nn.Conv2d):
                nn.init.ones_(m.weight)
        assert reset_attn_layers(host) == 2  # the registered name and the callable
        assert host[0].conv.weight.abs().sum() == 0
        assert host[2].conv.weight.abs().sum() == 0
        # timm's module keeps the host's init, as in timm's own models
        assert torch.equal(host[1].fc1.weight, torch.ones_like(se_before))
    finally:
        attn_registry._REGISTRY.pop("zero_init_test", None)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownAttnLayerError, match=r"unknown attention layer 'nosuch'.*valid names:.*se"):
        create_attn_layer("nosuch", 64)


def test_bad_type_and_channels() -> None:
    with pytest.raises(TypeError, match="attn_layer must be"):
        resolve_attn_layer(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        create_attn_layer("se", 0)


def test_name_from_entry_point_package_is_discovered(fake_plugin: str) -> None:
    """A name registered by a package nobody imported is found through the ctxnets.packages entry point."""
    m = create_attn_layer("fakeattn", 8)
    assert m is not None and type(m).__module__ == fake_plugin
    assert list_attn_layers()["fakeattn"] == "ctxnets-fakeplug"


def test_a_package_name_without_its_package_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """gcnet's "gc" never silently becomes timm's differently-configured GlobalContext."""
    monkeypatch.setitem(attn_registry.PROVIDED_BY, "ctxtest", "ctxnets-testpkg")
    with pytest.raises(
        UnknownAttnLayerError, match="from the ctxnets-testpkg package.*pip install ctxnets-testpkg"
    ):
        resolve_attn_layer("ctxtest")
    if "gc" not in attn_registry._REGISTRY:  # gcnet not installed in this venv
        with pytest.raises(UnknownAttnLayerError, match="pip install gcnet.*timm.gc"):
            create_attn_layer("gc", 64)
    assert create_attn_layer("timm.gc", 64) is not None  # timm's own module stays reachable
