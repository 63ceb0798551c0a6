"""save/load round trip, timm's local-dir reader, refused files, converter mismatch reports."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import timm
import torch

from ctxnets_shared.weights import (
    CheckpointConverter,
    CheckpointMismatchError,
    UnsafeCheckpointError,
    WeightsFileError,
    atomic_write,
    load_pretrained,
    read_checkpoint,
    save_pretrained,
)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = timm.create_model("resnet10t", num_classes=7)
    # non-trivial running statistics so a forgotten buffer would change outputs
    m.train()
    with torch.no_grad():
        m(torch.randn(4, 3, 32, 32))
    return m.eval()


def test_round_trip_is_bit_identical(model: torch.nn.Module, tmp_path: Path) -> None:
    out = save_pretrained(model, tmp_path / "w")
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    x = torch.randn(2, 3, 32, 32)
    loaded = load_pretrained(out)
    assert loaded.num_classes == 7
    assert torch.equal(loaded(x), model(x))


def test_timm_reads_our_folder(model: torch.nn.Module, tmp_path: Path) -> None:
    out = save_pretrained(model, tmp_path / "w")
    via_timm = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(via_timm(x), model(x))


def test_truncated_file_refused(model: torch.nn.Module, tmp_path: Path) -> None:
    out = save_pretrained(model, tmp_path / "w")
    f = out / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(WeightsFileError, match="not a readable safetensors file"):
        load_pretrained(out)


def test_missing_folder_and_config(tmp_path: Path) -> None:
    with pytest.raises(WeightsFileError, match="no such weights folder"):
        load_pretrained(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsFileError, match="has no config.json"):
        load_pretrained(tmp_path / "empty")


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_needing_code_execution_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": torch.zeros(1)}, "payload": _Evil()}, f)
    with pytest.raises(UnsafeCheckpointError, match="refused: loading it would run code"):
        read_checkpoint(path)
    torch.save({"x": torch.zeros(2), "cfg": _Evil()}, tmp_path / "evil2.pth")
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(tmp_path / "evil2.pth")


def test_truncated_pth_refused(model: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    torch.save(model.state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsFileError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(path)


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out" / "file.bin"
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b"partial")
        raise RuntimeError("interrupted")
    assert os.listdir(tmp_path / "out") == []


def test_converter_unwraps_training_checkpoint(model: torch.nn.Module, tmp_path: Path) -> None:
    sd = model.state_dict()
    ema = {f"module.{k}": v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    ckpt = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}, "state_dict_ema": ema}
    path = tmp_path / "train.pth.tar"
    torch.save(ckpt, path)
    out = CheckpointConverter().convert("resnet10t", path, tmp_path / "conv", num_classes=7)
    loaded = load_pretrained(out)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    out_ema = CheckpointConverter(use_ema=True).convert("resnet10t", path, tmp_path / "ema", num_classes=7)
    w = load_pretrained(out_ema).state_dict()["conv1.0.weight"]
    assert torch.equal(w, sd["conv1.0.weight"] + 1)


def test_converter_reports_every_mismatch(model: torch.nn.Module) -> None:
    sd = dict(model.state_dict())
    sd.pop("fc.bias")
    sd["extra.weight"] = torch.zeros(3)
    sd["fc.weight"] = torch.zeros(1000, 512)
    with pytest.raises(CheckpointMismatchError) as err:
        CheckpointConverter().convert_state_dict(sd, model)
    e = err.value
    assert e.missing == ["fc.bias"] and e.unexpected == ["extra.weight"]
    assert e.mismatched == [("fc.weight", (1000, 512), (7, 512))]
    msg = str(e)
    assert "missing:     fc.bias" in msg and "unexpected:  extra.weight" in msg
    assert "fc.weight: checkpoint [1000, 512] vs model [7, 512]" in msg


def test_converter_rejects_non_dict(tmp_path: Path) -> None:
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(WeightsFileError, match="expected a dict of tensors"):
        CheckpointConverter().unwrap(read_checkpoint(tmp_path / "list.pth"))


def test_recorded_constructor_kwargs_round_trip(tmp_path: Path) -> None:
    """Models built through build_model_with_args come back from their folder with their kwargs."""
    import json

    from timm.models import register_model
    from timm.models.resnet import BasicBlock, ResNet

    from ctxnets_shared.models import build_model_with_args, get_model_args

    @register_model
    def _ctxnets_test_resnet(pretrained: bool = False, **kwargs):  # type: ignore[no-untyped-def]
        args = dict(block=BasicBlock, layers=(1, 1, 1, 1))
        return build_model_with_args(ResNet, "_ctxnets_test_resnet", pretrained, **dict(args, **kwargs))

    torch.manual_seed(0)
    model = timm.create_model("_ctxnets_test_resnet", in_chans=1, global_pool="max", num_classes=4).eval()
    assert get_model_args(model)["in_chans"] == 1
    with pytest.raises(ValueError, match="block=.*cannot be saved in config.json"):
        save_pretrained(model, tmp_path / "a")  # the entry point's own class argument is no JSON value
    assert not (tmp_path / "a" / "model.safetensors").exists()
    args = {k: v for k, v in get_model_args(model).items() if k != "block"}
    save_pretrained(model, tmp_path / "b", model_args=args)
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["model_args"]["global_pool"] == "max" and config["pretrained_cfg"]["num_classes"] == 4
    x = torch.randn(2, 1, 32, 32)
    back = timm.create_model(f"local-dir:{tmp_path / 'b'}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(back(x), model(x)) and torch.equal(load_pretrained(tmp_path / "b")(x), model(x))
