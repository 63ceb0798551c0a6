"""Issue 25 for ``hiri-vit train``: kill -9 at random moments (some mid-write), SIGINT, resume settings,
the run lock and one-line errors. Bit-identical weights and identical metrics.jsonl / summary.json.

A 32-image folder (4 classes, 3 steps of 8 per epoch) and timm's test_resnet at 16 px keep every run to a
second or two of work, so epoch ends (validation records) fall inside the killed stretches.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ctxnets_shared.testing import kill_loop, stop_by_signal, temp_files
from ctxnets_shared.training import RunLock, find_latest_checkpoint
from hiri_vit.train import main


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the OMP_NUM_THREADS=1 subprocesses: bitwise-equal reductions
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c in range(4):
        (root / f"c{c}").mkdir()
        for i in range(8):
            pixels = (rng.random((12, 12, 3)) * 64 + 48 * c).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    return root  # 26 train (3 batches of 8), 6 val


def args(data: Path, out: Path, *extra: str, epochs: int = 2) -> list[str]:
    return [
        "train", "--model", "test_resnet", "--img-size", "16", "--batch-size", "8", "--data", str(data),
        "--epochs", str(epochs), "--ema-decay", "0.9", "--save-every", "1", "--device", "cpu",
        "--no-progress", "--out", str(out), *extra,
    ]  # fmt: skip


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical student and teacher, byte-identical metrics.jsonl and summary.json."""
    for part in ("model", "teacher"):
        wa, wb = load_file(a / part / "model.safetensors"), load_file(b / part / "model.safetensors")
        assert wa.keys() == wb.keys() and [k for k in wa if not torch.equal(wa[k], wb[k])] == []
    for name in ("metrics.jsonl", "summary.json"):
        assert (a / name).read_text() == (b / name).read_text(), name


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hiri-vit train: error: "), err
    return err


def test_mid_epoch_resume_validates_at_the_same_steps(data: Path, tmp_path: Path, capsys) -> None:
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert main(args(data, straight)) == 0
    assert main(args(data, halves, "--stop-after", "2")) == 0  # 2 of the epoch's 3 batches
    assert main(args(data, halves, "--resume")) == 0
    assert "resuming from step 2" in capsys.readouterr().err
    records = [json.loads(line) for line in (halves / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_acc" in r] == [3, 6]  # each epoch's end
    assert_same_run(straight, halves)


@pytest.fixture(scope="module")
def saved_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("saved") / "run"
    torch.set_num_threads(1)
    assert main(args(data, out, "--stop-after", "1")) == 0
    return out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--lr", "0.002"], "--lr was 0.001 in the saved run, now 0.002"),
        (["--drop-path", "0.1"], "--drop-path was 0.0 in the saved run, now 0.1"),
        (["--model", "resnet10t"], "--model was test_resnet in the saved run, now resnet10t"),
        (["--max-steps", "5"], "--max-steps was unset (the default) in the saved run, now 5"),
        (["--no-ema-distill"], "--ema-distill was True in the saved run, now False"),
    ],
)
def test_resume_with_a_changed_setting_is_refused(
    data: Path, saved_run: Path, capsys, change: list[str], message: str
) -> None:
    before = sorted(p.name for p in (saved_run / "checkpoints").iterdir())
    assert main([*args(data, saved_run, "--resume"), *change]) == 2
    assert (
        one_error_line(capsys)
        == f"hiri-vit train: error: cannot resume: {message} (start a new --out to change it)"
    )
    assert sorted(p.name for p in (saved_run / "checkpoints").iterdir()) == before


def test_resume_of_a_run_saved_before_the_warmup_rename_is_one_line(
    data: Path, saved_run: Path, tmp_path: Path, capsys
) -> None:
    # runs saved before --warmup-steps became --warmup-epochs record warmup_steps
    old = tmp_path / "old"
    shutil.copytree(saved_run, old)
    state = find_latest_checkpoint(old / "checkpoints")
    assert state is not None
    doc = json.loads(state.read_text())
    settings = doc["state"]["progress"]["settings"]
    del settings["warmup_epochs"]
    settings["warmup_steps"] = None
    state.write_text(json.dumps(doc))
    assert main(args(data, old, "--resume")) == 2
    assert one_error_line(capsys) == (
        "hiri-vit train: error: cannot resume: the saved run does not record --warmup-epochs "
        "(a checkpoint from an older version?)"
    )


def test_warmup_epochs_warm_up_over_that_many_epochs_of_steps(data: Path, tmp_path: Path) -> None:
    # 3 steps per epoch: one epoch of warm-up is 3 steps rising linearly from lr / 1000 towards lr
    assert main(args(data, tmp_path, "--warmup-epochs", "1", "--max-steps", "4", "--no-eval")) == 0
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    peak, start = 1e-3, 1e-6
    assert lrs[:3] == pytest.approx([start, start + (peak - start) / 3, start + 2 * (peak - start) / 3])
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["warmup_epochs"], config["warmup_steps"], config["steps_per_epoch"]) == (1.0, 3, 3)


def test_a_second_run_on_the_same_out_is_refused(data: Path, tmp_path: Path, capsys) -> None:
    with RunLock(tmp_path):
        assert main(args(data, tmp_path)) == 2
    assert f"is in use by another run (pid {os.getpid()} on" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "test_vit", "--img-size", "30"], "--img-size 30 does not fit VisionTransformer: Input"),
        (
            ["--batch-size", "1", "--mixup", "0", "--cutmix", "0"],
            "--batch-size 1 is too small to train test_resnet: its BatchNorm needs more than one value",
        ),
        (["--resume", "{bad_pointer}"], "is not a valid checkpoint pointer"),
        (["--resume", "{bad_state}"], "progress.step must be a non-negative integer, got '1'"),
    ],
)
def test_more_mistakes_are_one_line(
    data: Path, tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    saved = tmp_path / "saved" / "checkpoints"
    if "--resume" in extra:  # a saved run whose pointer or state file is then damaged
        assert main(args(data, saved.parent, "--max-steps", "1")) == 0
        capsys.readouterr()
        (saved / "latest.json").write_text('{"checkpoint": 7}')
        doc = json.loads((saved / "ckpt-00000001.json").read_text())
        doc["state"]["progress"]["step"] = "1"
        (saved / "ckpt-00000001.json").write_text(json.dumps(doc))
    extra = [e.format(bad_pointer=saved, bad_state=saved / "ckpt-00000001.json") for e in extra]
    assert main([*args(data, tmp_path / "run", "--max-steps", "1"), *extra]) == 2
    assert message in one_error_line(capsys)


def test_disk_full_while_checkpointing_is_one_line(
    data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*a: object, **k: object) -> bytes:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save", disk_full)
    assert main(args(data, tmp_path / "run")) == 2
    folder = tmp_path / "run" / "checkpoints"
    assert one_error_line(capsys) == (
        f"hiri-vit train: error: cannot write the checkpoint of step 1 to {folder}: "
        f"No space left on device; there is no earlier checkpoint"
    )


# ---- the kill loop -------------------------------------------------------------------------------------


def test_kill_9_loop_then_sigint_then_resume_equals_an_uninterrupted_run(
    data: Path, tmp_path: Path, capsys
) -> None:
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    cmd = [sys.executable, "-m", "hiri_vit.train", *args(data, killed, epochs=10)]
    torn = kill_loop(cmd, killed, kills=5, seed=0)
    assert torn >= 1, "no kill landed during a write"
    # the last kill's unfinished write, or one like it (earlier ones went at each restart)
    stale = temp_files(killed) or {killed / "checkpoints" / ".ckpt-00000099.json.k1ll3d00.tmp"}
    for p in stale:
        p.touch()
    # Ctrl-C: the step finishes, a checkpoint of it is saved, exit status 130
    status, err, start, stopped = stop_by_signal(cmd, killed, signal.SIGINT)
    assert status == 130, err[-2000:]
    assert (
        f"resuming from step {start}" in err and f"interrupted at step {stopped}; resume with --resume" in err
    )
    assert "Traceback" not in err and 0 < stopped < 30
    assert not any(p.exists() for p in stale)  # removed at the start
    assert main(args(data, killed, "--resume", epochs=10)) == 0
    assert f"resuming from step {stopped}" in capsys.readouterr().err
    assert not (killed / "run.lock").exists()
    assert main(args(data, straight, epochs=10)) == 0
    assert_same_run(straight, killed)
