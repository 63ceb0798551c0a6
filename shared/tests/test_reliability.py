"""Issue 25, the shared half: nothing silent, nothing lost, one-line errors.

Resume settings, the run lock, SIGINT/SIGTERM handling, checkpoint JSON validation and write errors,
crafted and legacy pickles, config.json checks, NaN/Inf weights, atomic_write's permissions and
symlink-safe image folders. The training commands' halves are in the care-ssl and hiri-vit tests.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import textwrap
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from ctxnets_shared import packages
from ctxnets_shared.cli import main as ctxnets
from ctxnets_shared.packages import CtxnetsPackage
from ctxnets_shared.training import (
    Checkpointer,
    CheckpointWriteError,
    DataError,
    ImageFolderDataset,
    ResumeSettingsError,
    RunLock,
    RunLockedError,
    StopOnSignal,
    build_datasets,
    check_input_fits,
    check_resume_settings,
    load_checkpoint,
    save_checkpoint,
    saved_settings,
)
from ctxnets_shared.training.errors import InputSizeError
from ctxnets_shared.weights import (
    CheckpointConverter,
    UnsafeCheckpointError,
    WeightsFileError,
    atomic_write,
    load_pretrained,
    read_checkpoint,
    remove_stale_temp_files,
    save_pretrained,
)

MODEL = "test_resnet"  # timm's 373k-parameter test ResNet (BatchNorm, 5 stages)


@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(MODEL, num_classes=4).eval()


@pytest.fixture(scope="module")
def convertible() -> dict[str, torch.Tensor]:
    """Weights ``ctxnets convert test_resnet`` takes (timm's default 1000 classes)."""
    torch.manual_seed(0)
    return timm.create_model(MODEL).state_dict()


@pytest.fixture
def convert_package(monkeypatch: pytest.MonkeyPatch) -> CtxnetsPackage:
    """A package whose converter is the plain CheckpointConverter, for ``ctxnets convert``."""
    pkg = CtxnetsPackage("convtest", "tests", "none", models=(MODEL,), converter=CheckpointConverter())
    monkeypatch.setattr(packages, "_CACHE", {"convtest": pkg})
    return pkg


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# ---- 1: resume settings ----------------------------------------------------------------------------------


def test_resume_settings_refuse_a_change_in_one_line() -> None:
    saved = {"lr": 0.05, "seed": 0, "crop_scale": [0.3, 1.0], "max_steps": None}
    same = {"lr": 0.05, "seed": 0, "crop_scale": (0.3, 1.0), "max_steps": None, "workers": 4}
    check_resume_settings(saved, same, ["lr", "seed", "crop_scale", "max_steps"])  # tuples equal lists
    with pytest.raises(ResumeSettingsError) as e:
        check_resume_settings(saved, {**same, "lr": 0.1}, ["seed", "lr"])
    assert str(e.value).startswith("cannot resume: --lr was 0.05 in the saved run, now 0.1")
    with pytest.raises(ResumeSettingsError, match="--max-steps was unset .* now 7"):
        check_resume_settings(saved, {**same, "max_steps": 7}, ["max_steps"])
    with pytest.raises(ResumeSettingsError, match="does not record --drop-path"):
        check_resume_settings(saved, {**same, "drop_path": 0.1}, ["drop_path"])


def test_checkpointer_stores_settings_read_back_without_tensors(tmp_path: Path) -> None:
    lin = torch.nn.Linear(2, 2)
    Checkpointer(tmp_path).save(3, {"model": lin}, epoch=0, batch_in_epoch=3, settings={"lr": 0.1})
    assert saved_settings(tmp_path) == {"lr": 0.1}
    save_checkpoint(tmp_path / "plain", 1, {"x": 1})
    with pytest.raises(WeightsFileError, match="records no run settings"):
        saved_settings(tmp_path / "plain")


# ---- 2 and 11: ctxnets convert --ema, NaN / Inf ---------------------------------------------------------


def test_convert_ema_without_ema_weights_fails_naming_the_keys(
    convert_package: CtxnetsPackage, convertible: dict[str, torch.Tensor], tmp_path: Path, capsys
) -> None:
    ckpt = tmp_path / "train.pth"
    torch.save({"epoch": 3, "state_dict": convertible}, ckpt)
    assert ctxnets(["convert", MODEL, str(ckpt), str(tmp_path / "out"), "--ema"]) == 2
    err = _one_error_line(capsys)
    assert "EMA weights requested" in err and "'epoch', 'state_dict'" in err
    assert not (tmp_path / "out").exists()
    assert ctxnets(["convert", MODEL, str(ckpt), str(tmp_path / "out")]) == 0  # the regular weights


def test_nonfinite_weights_fail_convert_and_warn_on_load(
    convert_package: CtxnetsPackage, convertible: dict[str, torch.Tensor], tmp_path: Path, capsys
) -> None:
    sd = {k: v.clone() for k, v in convertible.items()}
    sd["fc.weight"][0, 0] = float("nan")
    sd["conv1.0.weight"][0, 0, 0, 0] = float("inf")
    ckpt = tmp_path / "bad.pth"
    torch.save(sd, ckpt)
    assert ctxnets(["convert", MODEL, str(ckpt), str(tmp_path / "out")]) == 2
    err = _one_error_line(capsys)
    assert "2 tensor(s) hold NaN or Inf" in err and "fc.weight" in err and "--allow-nonfinite" in err
    assert ctxnets(["convert", MODEL, str(ckpt), str(tmp_path / "out"), "--allow-nonfinite"]) == 0
    with pytest.warns(UserWarning, match=r"2 tensor\(s\) hold NaN or Inf values: .*fc.weight"):
        load_pretrained(tmp_path / "out")


# ---- 5: the run lock -------------------------------------------------------------------------------------


def test_run_lock_refuses_a_second_run_and_takes_over_a_dead_ones(tmp_path: Path) -> None:
    with RunLock(tmp_path) as held:
        assert held.path.read_text().split()[0] == str(os.getpid())
        with pytest.raises(RunLockedError) as e, RunLock(tmp_path):
            pass
        assert f"in use by another run (pid {os.getpid()} on" in str(e.value)
        assert "\n" not in str(e.value)
    assert not (tmp_path / "run.lock").exists()
    # a run killed with -9 leaves its lock file behind with a pid that no longer runs
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run.lock").write_text(f"{dead.pid} {os.uname().nodename}\n")
    with RunLock(tmp_path) as taken:
        assert taken.path.read_text().split()[0] == str(os.getpid())


# ---- 4: signals -----------------------------------------------------------------------------------------


def test_stop_on_signal_asks_once_then_aborts_and_restores_handlers() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignal() as stop:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested() and stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second signal gives up at once
    assert signal.getsignal(signal.SIGTERM) is before


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / ".metrics.jsonl.ab_cd123.tmp", tmp_path / "checkpoints" / ".ckpt-1.json.x1y2z3w4.tmp"]
    kept = [tmp_path / "notes.tmp", tmp_path / "checkpoints" / "ckpt-1.json", tmp_path / ".hidden"]
    for p in stale + kept:
        p.write_text("x")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


# ---- 6: one-line errors ------------------------------------------------------------------------------------


def _zip_with_pickle(path: Path, data_pkl: bytes) -> Path:
    """A torch.save archive whose data.pkl is replaced by a crafted pickle."""
    torch.save({"a": torch.zeros(1)}, path)
    with zipfile.ZipFile(path) as z:
        items = {n: z.read(n) for n in z.namelist()}
    name = next(n for n in items if n.endswith("/data.pkl"))
    items[name] = data_pkl
    with zipfile.ZipFile(path, "w") as z:
        for n, d in items.items():
            z.writestr(n, d)
    return path


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _huge_ndarray_pickle(dtype: object) -> bytes:
    # numpy's own pickle of a 3-element array, its shape rewritten to 2**40 elements
    pk = pickle.dumps(np.zeros(3, dtype=dtype), protocol=2)
    assert pk.count(b"K\x03\x85") == 1
    return pk.replace(b"K\x03\x85", b"\x8a\x06" + (2**40).to_bytes(6, "little") + b"\x85")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("dtype", "malformed object (TypeError: data type 'bogus' not understood)"),
        ("namespace", "malformed object (TypeError: Namespace.__init__() takes 1 positional"),
        ("rebuild_tensor", "malformed object (TypeError: _rebuild_tensor_v2() missing 4"),
        ("ndarray_2e40", "shape (1099511627776,) (1099511627776 elements) but its data holds 3; refused"),
        ("ndarray_2e40_object", "(1099511627776 elements) but its data holds 3; refused before allocating"),
    ],
)
def test_crafted_pickles_with_bad_arguments_are_one_line(
    convert_package: CtxnetsPackage, tmp_path: Path, capsys, case: str, message: str
) -> None:
    proto = pickle.PROTO + b"\x02"
    crafted = {
        "dtype": proto + _global("numpy", "dtype") + b"X\x05\x00\x00\x00bogus\x85R.",
        "namespace": proto + _global("argparse", "Namespace") + b"K\x01\x85R.",
        "rebuild_tensor": proto + _global("torch._utils", "_rebuild_tensor_v2") + b"K\x01K\x02\x86R.",
        "ndarray_2e40": _huge_ndarray_pickle(np.float32),
        "ndarray_2e40_object": _huge_ndarray_pickle(object),
    }[case]
    path = _zip_with_pickle(tmp_path / f"{case}.pth", crafted)
    with pytest.raises(WeightsFileError, match="malformed") as e:
        read_checkpoint(path)
    assert message in str(e.value) and not isinstance(e.value, UnsafeCheckpointError)
    assert ctxnets(["convert", MODEL, str(path), str(tmp_path / "out")]) == 2
    assert message in _one_error_line(capsys)


def test_plain_ndarrays_still_load(tmp_path: Path) -> None:
    torch.save({"hist": np.arange(5), "obj": np.array([1, "a"], dtype=object)}, tmp_path / "np.pth")
    loaded = read_checkpoint(tmp_path / "np.pth")
    assert type(loaded["hist"]) is np.ndarray and loaded["hist"].tolist() == [0, 1, 2, 3, 4]
    assert type(loaded["obj"]) is np.ndarray and loaded["obj"].tolist() == [1, "a"]


def test_whole_model_pickle_says_save_the_state_dict(tmp_path: Path) -> None:
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 3)), tmp_path / "model.pth")
    with pytest.raises(WeightsFileError, match=r"holds a pickled nn.Module .*save its state_dict"):
        read_checkpoint(tmp_path / "model.pth")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([1, 2], "holds a JSON list, expected an object"),
        ({"num_classes": 4}, "has no 'architecture'"),
        ({"architecture": "no_such_net_xyz"}, "'no_such_net_xyz', which no installed package registers"),
        ({"architecture": MODEL, "model_args": {"bogus_arg": 1}}, "model_args do not fit test_resnet"),
        ({"architecture": "hf-hub:timm/resnet18.a1_in1k"}, "a source prefix (hf-hub:, local-dir:, ...)"),
        ({"architecture": MODEL, "model_args": {"checkpoint_path": "/x.pth"}}, "['checkpoint_path'] would"),
        (
            {"architecture": MODEL, "model_args": {"pretrained_cfg_overlay": {"file": "/etc/passwd"}}},
            "['pretrained_cfg_overlay'] would make timm read other files",
        ),
        ({"architecture": MODEL, "num_classes": 10**9}, "num_classes=1000000000 is not a class count"),
        ({"architecture": MODEL, "model_args": {"num_classes": 2 * 10**5}}, "model_args.num_classes=200000"),
        ({"architecture": MODEL, "num_classes": 5}, "fc.weight: checkpoint [4, 96] vs model [5, 96]"),
    ],
)
def test_bad_config_json_is_refused_before_building(
    small_model: torch.nn.Module,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    config: object,
    message: str,
) -> None:
    folder = save_pretrained(small_model, tmp_path / "w", architecture=MODEL)
    (folder / "config.json").write_text(json.dumps(config))
    built: list[str] = []
    real_create = timm.create_model

    def spy(name: str, *args: object, **kwargs: object) -> torch.nn.Module:
        model = real_create(name, *args, **kwargs)
        if next(model.parameters()).device.type != "meta":
            built.append(name)
        return model

    monkeypatch.setattr(timm, "create_model", spy)
    with pytest.raises(ValueError) as e:  # WeightsFileError, or CheckpointMismatchError for the shapes
        load_pretrained(folder)
    assert message in str(e.value)
    assert built == []  # refused before any real (allocating) build


def test_checkpoint_json_with_wrong_types_is_a_clear_error(tmp_path: Path) -> None:
    lin = torch.nn.Linear(2, 2)
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, {"model": lin}, epoch=0, batch_in_epoch=1)
    good_state = (tmp_path / "ckpt-00000001.json").read_text()
    for pointer, message in [
        ("[1]", "is not a valid checkpoint pointer"),
        ('{"step": 1}', "is not a valid checkpoint pointer"),
        ('{"checkpoint": "../../etc/passwd"}', "is not a valid checkpoint pointer"),
        ('{"checkpoint": "ckpt-00000009.json"}', "names ckpt-00000009.json, which is missing"),
    ]:
        (tmp_path / "latest.json").write_text(pointer)
        with pytest.raises(WeightsFileError, match=message):
            ckpt.resume(tmp_path, {"model": lin})
    (tmp_path / "latest.json").write_text('{"checkpoint": "ckpt-00000001.json", "step": 1}')
    doc = json.loads(good_state)
    broken = [
        ({**doc, "num_tensors": "2"}, "'num_tensors' .an integer."),
        ({**doc, "tensors": "/etc/passwd"}, "'tensors' must name a .safetensors file beside it"),
        ({**doc, "state": {**doc["state"], "progress": {**doc["state"]["progress"], "step": "1"}}}, "step"),
        ({**doc, "state": {k: v for k, v in doc["state"].items() if k != "rng"}}, "lacks 'objects'"),
        (
            {**doc, "state": {**doc["state"], "objects": {"model": {"weight": {"__tensor__": "nope"}}}}},
            "KeyError",
        ),
    ]
    for bad, message in broken:
        (tmp_path / "ckpt-00000001.json").write_text(json.dumps(bad))
        with pytest.raises(WeightsFileError, match=message):
            ckpt.resume(tmp_path, {"model": lin})


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path: Path, monkeypatch) -> None:
    lin = torch.nn.Linear(2, 2)
    ckpt = Checkpointer(tmp_path)
    ckpt.save(2, {"model": lin}, epoch=0, batch_in_epoch=2)

    def disk_full(*args: object, **kwargs: object) -> bytes:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save", disk_full)
    with pytest.raises(CheckpointWriteError) as e:
        ckpt.save(4, {"model": lin}, epoch=0, batch_in_epoch=4)
    assert str(e.value) == (
        f"cannot write the checkpoint of step 4 to {tmp_path}: No space left on device; "
        f"the previous checkpoint (step 2) is kept"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-00000002.json", "ckpt-00000002.safetensors", "latest.json"
    ]  # fmt: skip
    assert load_checkpoint(tmp_path)["progress"]["step"] == 2


def test_file_too_large_while_writing_a_checkpoint_is_one_line(tmp_path: Path) -> None:
    """A real EFBIG: the file-size limit lets the small first checkpoint through, not the larger second."""
    script = textwrap.dedent(
        f"""
        import resource, signal, torch
        from ctxnets_shared.training import save_checkpoint, load_checkpoint
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        save_checkpoint({str(tmp_path)!r}, 1, {{"w": torch.zeros(1000)}})
        try:
            save_checkpoint({str(tmp_path)!r}, 2, {{"w": torch.zeros(100_000)}})
        except ValueError as e:
            print(e)
        print(load_checkpoint({str(tmp_path)!r})["w"].numel())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    message, kept = done.stdout.strip().splitlines()
    assert message.startswith("cannot write the checkpoint of step 2 to ") and "File too large" in message
    assert message.endswith("the previous checkpoint (step 1) is kept") and kept == "1000"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") or "00000002" in p.name]


def test_input_size_the_model_cannot_take_is_one_line() -> None:
    vit = timm.create_model("test_vit", img_size=32)
    check_input_fits(vit, lambda: (torch.zeros(2, 3, 32, 32),), "--img-size 32")
    with pytest.raises(InputSizeError, match=r"--img-size 30 does not fit VisionTransformer: Input height"):
        check_input_fits(vit, lambda: (torch.zeros(2, 3, 30, 30),), "--img-size 30")
    assert vit.training  # its mode is restored


# ---- 7: permissions ---------------------------------------------------------------------------------------


def test_atomic_write_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a.json", "w") as f:
            f.write("{}")
        os.umask(0o077)
        with atomic_write(tmp_path / "b.json", "w") as f:
            f.write("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600


# ---- 8: image folders with symlinks ---------------------------------------------------------------------


def _images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        Image.fromarray(np.full((4, 4, 3), 10 * i, dtype=np.uint8)).save(folder / n)


def test_symlinked_duplicates_count_once_and_loops_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _images(root / "a", ["1.png", "2.png"])
    _images(root / "b", ["3.png"])
    (root / "a" / "again.png").symlink_to(root / "a" / "1.png")  # the same image twice in one class
    ds = ImageFolderDataset(root)
    assert sorted(p.name for p, _ in ds.samples) == ["1.png", "2.png", "3.png"]
    (root / "b" / "loop").symlink_to(root / "b")  # a folder that contains itself
    with pytest.raises(DataError, match="leads back to .* symlink loop"):
        ImageFolderDataset(root)
    (root / "b" / "loop").unlink()
    (root / "b" / "1.png").symlink_to(root / "a" / "1.png")
    with pytest.raises(DataError, match=r"the same image under two classes \(a, b\)"):
        ImageFolderDataset(root)


def test_val_images_linked_into_train_and_empty_classes_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for split in ("train", "val"):
        _images(root / split / "a", ["1.png", "2.png"])
        _images(root / split / "b", ["3.png", "4.png"])
    assert len(build_datasets(root, img_size=4).train) == 4
    (root / "train" / "b" / "leak.png").symlink_to(root / "val" / "a" / "1.png")
    with pytest.raises(DataError, match=r"leak.png \(train\) is the same file as .*val.*a/1.png \(val\)"):
        build_datasets(root, img_size=4)
    (root / "train" / "b" / "leak.png").unlink()
    (root / "train" / "c").mkdir()
    (root / "val" / "c").mkdir()
    with pytest.raises(DataError, match=r"no images found in class folder .*train/c"):
        build_datasets(root, img_size=4)


# ---- 9: legacy pickles ---------------------------------------------------------------------------------


@pytest.fixture
def fake_yacs():
    module = types.ModuleType("yacs.config")

    class CfgNode(dict):
        pass

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    module.CfgNode = CfgNode  # type: ignore[attr-defined]
    sys.modules["yacs"], sys.modules["yacs.config"] = types.ModuleType("yacs"), module
    yield CfgNode
    del sys.modules["yacs.config"], sys.modules["yacs"]


class _RunsCode:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("echo pwned",))


def test_legacy_pth_with_trainer_objects_loads_as_inert_stand_ins(tmp_path: Path, fake_yacs: type) -> None:
    cfg = fake_yacs(MODEL={"DEPTH": 50})
    ckpt = {"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1), "cfg": cfg}
    torch.save(ckpt, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(tmp_path / "legacy.pth")
    loaded = read_checkpoint(tmp_path / "legacy.pth")
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2)) and loaded["args"].lr == 0.1
    assert loaded["cfg"]["MODEL"] == {"DEPTH": 50} and loaded["cfg"].ctxnets_stand_in == "yacs.config.CfgNode"
    torch.save(
        {"w": torch.ones(1), "x": _RunsCode()}, tmp_path / "evil.pth", _use_new_zipfile_serialization=False
    )
    with pytest.raises(UnsafeCheckpointError, match="loading it would run code .*posix.system"):
        read_checkpoint(tmp_path / "evil.pth")
