"""Trainer checkpoints with foreign objects convert; code-running pickles are refused and run nothing."""

from __future__ import annotations

import argparse
import os
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from ctxnets_shared.weights import (
    CheckpointConverter,
    UnsafeCheckpointError,
    WeightsFileError,
    load_pretrained,
    read_checkpoint,
)


class _RunsCode:
    """Pickles as a call of ``os.system``: loading it would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


class _CallsPrint:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("this must never be printed",))


@pytest.fixture
def fake_yacs():
    """A yacs-like ``CfgNode`` (a dict subclass with attributes) under its real module path."""
    module = types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.__dict__["__immutable__"] = False

    CfgNode.__module__ = "yacs.config"
    CfgNode.__qualname__ = "CfgNode"
    module.CfgNode = CfgNode
    sys.modules["yacs"] = types.ModuleType("yacs")
    sys.modules["yacs.config"] = module
    yield CfgNode
    sys.modules.pop("yacs.config")
    sys.modules.pop("yacs")


def _trainer_checkpoint(state: dict, cfg_node: type) -> dict:
    # the official CoTNet / DeiT trainers' layout, plus what other trainers add
    return {
        "epoch": 99,
        "arch": "resnet10t",
        "state_dict": {f"module.{k}": v for k, v in state.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
        "args": argparse.Namespace(model="resnet10t", lr=0.1, epochs=350, amp=True),
        "state_dict_ema": {f"_orig_mod.{k}": v for k, v in state.items()},
        "config": cfg_node({"MODEL": cfg_node({"DEPTH": 50}), "SOLVER": {"LR": 0.1}}),
        "best_metric": np.float64(81.3),
        "history": np.arange(3),
    }


def test_trainer_checkpoint_with_foreign_objects_converts(tmp_path: Path, fake_yacs: type) -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=5).eval()
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(_trainer_checkpoint(model.state_dict(), fake_yacs), path)
    ckpt = read_checkpoint(path)
    assert isinstance(ckpt["args"], argparse.Namespace) and ckpt["args"].lr == 0.1
    assert ckpt["best_metric"] == 81.3 and list(ckpt["history"]) == [0, 1, 2]
    cfg = ckpt["config"]  # an inert stand-in: items, attributes and the name of the class it replaces
    assert type(cfg) is OrderedDict and cfg.ctxnets_stand_in == "yacs.config.CfgNode"
    assert cfg["MODEL"]["DEPTH"] == 50 and cfg.__dict__["__immutable__"] is False
    x = torch.randn(1, 3, 32, 32)
    for use_ema in (False, True):  # module. (DDP) and _orig_mod. (torch.compile) prefixes stripped
        out = CheckpointConverter(use_ema=use_ema).convert(
            "resnet10t", path, tmp_path / f"o{use_ema}", num_classes=5
        )
        with torch.no_grad():
            assert torch.equal(load_pretrained(out)(x), model(x))


def test_combined_prefixes_are_stripped() -> None:
    conv = CheckpointConverter()
    sd = {"module._orig_mod.fc.weight": torch.zeros(1), "_orig_mod.module.fc.bias": torch.zeros(1)}
    assert sorted(conv.unwrap({"state_dict": sd})) == ["fc.bias", "fc.weight"]


def test_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path: Path, capfd) -> None:
    marker = tmp_path / "ran"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": _RunsCode(marker)}, tmp_path / "a.pth")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _CallsPrint()}, tmp_path / "b.pth")
    with pytest.raises(UnsafeCheckpointError, match="would run code.*posix.system"):
        read_checkpoint(tmp_path / "a.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"calls builtins.print\(...\)"):
        read_checkpoint(tmp_path / "b.pth")
    assert not marker.exists()
    assert "never be printed" not in capfd.readouterr().out


def test_non_checkpoint_is_told_apart_from_a_refused_one(tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("epoch 3: top-1 81.3\n")
    with pytest.raises(WeightsFileError, match="is not a PyTorch checkpoint") as err:
        read_checkpoint(text)
    assert not isinstance(err.value, UnsafeCheckpointError)
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(3)}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(WeightsFileError, match="truncated or corrupted") as err:
        read_checkpoint(cut)
    assert not isinstance(err.value, UnsafeCheckpointError)
