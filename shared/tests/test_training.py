"""ctxnets_shared.training: data, transforms, checkpoints with exact resume (also after a real SIGKILL)."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ctxnets_shared.training import (
    AugmentedDataset,
    Checkpointer,
    DataError,
    DefaultsHelpFormatter,
    DigitsDataset,
    DistInfo,
    ImageFolderDataset,
    MetricLogger,
    ResumableDistributedSampler,
    add_run_args,
    build_datasets,
    capture_rng_state,
    load_checkpoint,
    plot_metrics,
    read_metrics,
    resolve_device,
    restore_rng_state,
    save_checkpoint,
)
from ctxnets_shared.training.transforms import CenterCrop, RandomResizedCrop, Resize, build_transform
from ctxnets_shared.weights import WeightsFileError

SCRIPT = Path(__file__).with_name("train_loop_script.py")


@functools.cache
def _loop_module():
    spec = importlib.util.spec_from_file_location("ctxnets_train_loop_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ---- data -----------------------------------------------------------------------------------------------


def test_digits_split_is_fixed_stratified_and_complete() -> None:
    train, val = DigitsDataset("train", 8, 1), DigitsDataset("val", 8, 1)
    assert len(train) + len(val) == 1797  # scikit-learn's bundled digits
    assert len(val) == pytest.approx(0.2 * 1797, abs=10)
    assert set(val.targets) == set(range(10))
    img, label = train[0]
    assert img.shape == (1, 8, 8) and img.min() >= 0 and img.max() <= 1 and 0 <= label <= 9
    labels = np.asarray(DigitsDataset("all", 8, 1).targets)
    tr_idx = DigitsDataset._split_indices(labels, "train", 0.2)
    val_idx = DigitsDataset._split_indices(labels, "val", 0.2)
    assert not set(tr_idx) & set(val_idx) and len(set(tr_idx) | set(val_idx)) == 1797
    assert np.array_equal(val_idx, DigitsDataset._split_indices(labels, "val", 0.2))  # fixed


def test_digits_upsampled_to_size_and_channels() -> None:
    ds = DigitsDataset("val", img_size=24, in_chans=3)
    img, _ = ds[3]
    assert img.shape == (3, 24, 24)
    assert torch.equal(img[0], img[2])


def test_augmented_dataset_depends_only_on_seed_epoch_index() -> None:
    base = DigitsDataset("val", 16, 3)
    aug = AugmentedDataset(base, build_transform(16, True, scale=(0.3, 1.0)), seed=5)
    a = aug[7][0]
    _ = [aug[i] for i in range(5)]  # other draws in between do not matter
    torch.manual_seed(123)  # nor does the global RNG
    assert torch.equal(aug[7][0], a)
    aug.set_epoch(1)
    assert not torch.equal(aug[7][0], a)


def test_transforms_shapes() -> None:
    img = torch.rand(3, 30, 50)
    assert Resize(20)(img).shape == (3, 20, 33)
    assert CenterCrop(20)(img).shape == (3, 20, 20)
    assert CenterCrop(40)(img).shape == (3, 40, 40)  # padded
    g = torch.Generator().manual_seed(0)
    rrc = RandomResizedCrop(16, scale=(0.2, 0.5))
    for _ in range(20):
        top, left, h, w = rrc.box(30, 50, g)
        assert top >= 0 and top + h <= 30 and left >= 0 and left + w <= 50
        assert 0.2 * 1500 * 0.8 <= h * w <= 0.5 * 1500 * 1.2
    assert rrc(img, g).shape == (3, 16, 16)
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop(16, scale=(0.5, 0.2))


def _write_folder(root: Path, per_class: int = 3) -> None:
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, size=(20 + i, 30, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")


def test_image_folder_reads_classes_and_splits(tmp_path: Path) -> None:
    _write_folder(tmp_path / "imgs", per_class=5)
    ds = ImageFolderDataset(tmp_path / "imgs")
    assert ds.classes == ("cat", "dog") and len(ds) == 10
    img, label = ds[6]
    assert img.shape == (3, 21, 30) and label == 1 and img.dtype == torch.float32
    grey = ImageFolderDataset(tmp_path / "imgs", in_chans=1)[0][0]
    assert grey.shape[0] == 1
    splits = build_datasets(tmp_path / "imgs", img_size=16, val_fraction=0.2)
    assert splits.num_classes == 2 and len(splits.train) == 8 and len(splits.val) == 2
    x, _ = splits.train[0]
    assert x.shape == (3, 16, 16)


@pytest.mark.parametrize("case", ["missing", "empty", "file"])
def test_image_folder_errors_are_one_line(tmp_path: Path, case: str) -> None:
    path = tmp_path / "data"
    if case == "empty":
        (path / "cls").mkdir(parents=True)
    elif case == "file":
        path.write_text("x")
    with pytest.raises(DataError) as err:
        build_datasets(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert {"missing": "not found", "empty": "no images", "file": "not a folder"}[case] in msg


def test_sampler_resumes_mid_epoch() -> None:
    ds = list(range(20))
    info = DistInfo(rank=1, world_size=2)
    s = ResumableDistributedSampler(ds, info, batch_size=3, seed=4)
    s.set_epoch(2)
    full = list(s)
    s.set_position(2, batches_done=2)
    assert list(s) == full[6:] and len(s) == len(full) - 6
    other = ResumableDistributedSampler(ds, DistInfo(rank=0, world_size=2), batch_size=3, seed=4)
    other.set_epoch(2)
    assert sorted(full + list(other)) == ds  # the two ranks share the epoch out


# ---- checkpoint files -----------------------------------------------------------------------------------


def test_state_round_trip_is_exact(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": capture_rng_state(),
        "misc": {"t": (1, 2.5, None, "a"), "inf": math.inf, 3: [True]},
    }
    save_checkpoint(tmp_path, 7, state)
    back = load_checkpoint(tmp_path)
    assert back["misc"] == {"t": (1, 2.5, None, "a"), "inf": math.inf, 3: [True]}
    assert back["optimizer"]["param_groups"] == opt.state_dict()["param_groups"]
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(back["optimizer"]["state"][0][k], v)
    assert all(torch.equal(back["model"][k], v) for k, v in model.state_dict().items())
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["ckpt-00000007.json", "ckpt-00000007.safetensors", "latest.json"]  # no temp leftovers


def test_rng_restore_continues_every_generator() -> None:
    import random

    state = capture_rng_state()
    draws = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


def test_keep_and_pointer(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert json.loads((tmp_path / "latest.json").read_text())["checkpoint"] == "ckpt-00000003.json"
    assert not (tmp_path / "ckpt-00000001.json").exists()
    assert load_checkpoint(tmp_path)["step"] == 3


def test_damaged_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsFileError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, 1, {"w": torch.ones(100)})
    st = tmp_path / "ckpt-00000001.safetensors"
    st.write_bytes(st.read_bytes()[:50])
    with pytest.raises(WeightsFileError, match="truncated or corrupted"):
        load_checkpoint(tmp_path)


def test_checkpointer_lists_mismatched_keys(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path)
    ck.save(1, {"model": torch.nn.Linear(3, 2)}, epoch=0, batch_in_epoch=1)
    with pytest.raises(ValueError, match="weight"):
        ck.resume(tmp_path, {"model": torch.nn.Linear(4, 2)})
    with pytest.raises(WeightsFileError, match="'optimizer'"):
        ck.resume(tmp_path, {"optimizer": torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1)})


# ---- metrics --------------------------------------------------------------------------------------------


def test_metric_logger_trims_on_resume_and_plots(tmp_path: Path) -> None:
    log = MetricLogger(tmp_path / "m.jsonl")
    for s in range(1, 6):
        log.log(s, loss=1.0 / s, lr=torch.tensor(0.1))
    with open(tmp_path / "m.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # a torn line from a killed run
    MetricLogger(tmp_path / "m.jsonl", resume_step=3)
    recs = read_metrics(tmp_path / "m.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3] and recs[0]["lr"] == pytest.approx(0.1)
    png = plot_metrics(tmp_path / "m.jsonl", tmp_path / "m.png", ["loss", "knn"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def test_plot_metrics_is_a_grid_and_hides_keys_without_data(tmp_path: Path) -> None:
    records = [{"step": s, "a": s, "b": -s, "c": s * s, "d": 1.0, "e": 2.0, "f": None} for s in range(1, 5)]
    one = _png_size(plot_metrics(records, tmp_path / "one.png", ["a"]))
    # a key with no data (missing, or only None) gets no panel: the figure is the one-panel figure
    assert _png_size(plot_metrics(records, tmp_path / "hidden.png", ["a", "missing", "f"])) == one
    # five panels: three side by side, two rows (not a strip five panels wide)
    w, h = _png_size(plot_metrics(records, tmp_path / "five.png", list("abcde")))
    assert w == pytest.approx(3 * one[0], rel=0.05) and h == pytest.approx(2 * one[1], rel=0.05)
    w, h = _png_size(plot_metrics(records, tmp_path / "four.png", list("abcd")))  # 2 x 2
    assert w == pytest.approx(2 * one[0], rel=0.05) and h == pytest.approx(2 * one[1], rel=0.05)
    # no key has data: still a PNG (one panel saying so), not an error
    assert _png_size(plot_metrics(records, tmp_path / "none.png", ["missing"])) == one
    with pytest.raises(ValueError, match="at least one key"):
        plot_metrics(records, tmp_path / "x.png", [])


# ---- shared command-line flags --------------------------------------------------------------------------


def test_run_args_have_one_spelling_and_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="t", formatter_class=DefaultsHelpFormatter)
    add_run_args(
        p, amp=False, amp_help="bf16", warmup_epochs=None, warmup_help="5%% of the steps", progress=True
    )
    a = p.parse_args([])
    assert (a.device, a.workers, a.amp, a.warmup_epochs, a.no_progress) == ("auto", 0, False, None, False)
    a = p.parse_args(
        ["--device", "cuda:1", "--workers", "4", "--amp", "--warmup-epochs", "2.5", "--no-progress"]
    )
    assert (a.device, a.workers, a.amp, a.warmup_epochs, a.no_progress) == ("cuda:1", 4, True, 2.5, True)
    assert p.parse_args(["--no-amp"]).amp is False
    assert resolve_device("auto") is None and resolve_device("cpu") == "cpu"
    for bad, message in (
        (["--device", "gpu"], "expected auto, cpu, cuda or cuda:N"),
        (["--workers", "-2"], ">= 0"),
    ):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
        assert message in capsys.readouterr().err
    text = " ".join(p.format_help().split())
    assert "--amp, --no-amp bf16 (default: False)" in text  # a --x/--no-x pair shows its default
    assert "--workers WORKERS DataLoader worker processes (per process) (default: 0)" in text
    assert "--warmup-epochs WARMUP_EPOCHS 5% of the steps" in text and "(default: None)" not in text
    assert text.endswith("--no-progress no progress bar")  # a plain switch: no "(default: False)"
    # the flags left out are not there
    q = argparse.ArgumentParser()
    add_run_args(q)
    assert {s for a in q._actions for s in a.option_strings} == {"-h", "--help", "--device", "--workers"}


# ---- exact resume ---------------------------------------------------------------------------------------

STEPS = 10  # 6 batches per epoch: resuming at 5 is mid-epoch, and the run crosses an epoch boundary


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"differ: {diff}"


@functools.cache
def _straight(tmp: str) -> dict[str, torch.Tensor]:
    return _loop_module().train(Path(tmp), STEPS)


def test_resume_equals_uninterrupted(tmp_path_factory: pytest.TempPathFactory, one_thread) -> None:
    straight = _straight(str(tmp_path_factory.mktemp("straight")))
    out = tmp_path_factory.mktemp("halves")
    loop = _loop_module()
    _run_until(loop.train, out, stop=STEPS // 2)  # the STEPS-long schedule, abandoned after step 5
    resumed = loop.train(out, STEPS, resume=True)
    _assert_same(straight, resumed)
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl")]
    assert steps == list(range(1, STEPS + 1))
    # the comparison is not vacuous: training moved the weights away from their initial values
    torch.manual_seed(0)
    init = loop.tiny_net().state_dict()
    assert not torch.equal(straight["model.9.weight"], init["9.weight"])


class _Stop(Exception):
    pass


def _run_until(train, out: Path, stop: int) -> None:
    """Run the STEPS-long schedule but abandon it right after the checkpoint of step ``stop``."""
    import ctxnets_shared.training.checkpoint as ck

    original = ck.Checkpointer.save

    def save_then_maybe_stop(self, step, *args, **kwargs):
        path = original(self, step, *args, **kwargs)
        if step == stop:
            raise _Stop
        return path

    ck.Checkpointer.save = save_then_maybe_stop  # type: ignore[method-assign]
    try:
        with pytest.raises(_Stop):
            train(out, STEPS)
    finally:
        ck.Checkpointer.save = original  # type: ignore[method-assign]


def test_resume_after_sigkill_equals_uninterrupted(
    tmp_path_factory: pytest.TempPathFactory, one_thread
) -> None:
    straight = _straight(str(tmp_path_factory.mktemp("straight")))
    out = tmp_path_factory.mktemp("killed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            str(out),
            "--steps",
            str(STEPS),
            "--die-after",
            "4",
            "--save-every",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]  # really killed, not a clean exit
    assert not (out / "final-rank0.safetensors").exists()
    assert json.loads((out / "ckpt" / "latest.json").read_text())["step"] == 4
    resumed = _loop_module().train(out, STEPS, resume=True)
    _assert_same(straight, resumed)


def test_torchrun_two_processes_sync_bn_and_identical_ranks(tmp_path: Path) -> None:
    """A real 2-process torchrun (gloo, CPU): synchronised BatchNorm matches whole-batch BatchNorm, and
    both ranks end the training loop (DDP, sampler, EMA, checkpoints) with identical weights."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(SCRIPT), str(tmp_path), "--steps", "3", "--check-syncbn"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        checks = json.loads((tmp_path / f"syncbn-rank{rank}.json").read_text())
        assert checks == {
            "type": "CollectiveBatchNorm",
            "out": True,
            "input_grad": True,
            "param_grad": True,
            "running": True,
        }
    a = load_file(tmp_path / "final-rank0.safetensors")
    b = load_file(tmp_path / "final-rank1.safetensors")
    _assert_same(a, b)
    assert json.loads((tmp_path / "ckpt" / "latest.json").read_text())["step"] == 3
