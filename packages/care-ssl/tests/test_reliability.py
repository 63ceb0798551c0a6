"""Issue 25 for ``care-ssl pretrain``: kill -9 at random moments (some mid-write), SIGTERM, resume
settings, the run lock and one-line errors. Bit-identical weights and an identical metrics.jsonl.

A 32-image folder (3 steps of 8 per epoch) and timm's test_resnet at 32 px with thin heads keep every run
to a second or two of work; kNN every 4 steps puts accuracy records inside the killed stretches.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from care_ssl.cli import main
from ctxnets_shared.testing import kill_loop, stop_by_signal, temp_files
from ctxnets_shared.training import RunLock, load_checkpoint


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
        "pretrain", "--model", "test_resnet", "--img-size", "32", "--batch-size", "8", "--data", str(data),
        "--hidden-dim", "32", "--proj-dim", "16", "--depth", "1", "--heads", "2", "--dim-head", "8",
        "--epochs", str(epochs), "--knn-every", "4", "--save-every", "1", "--device", "cpu",
        "--out", str(out), *extra,
    ]  # fmt: skip


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical final state (online, target, heads, BN statistics), byte-identical metrics.jsonl."""
    wa, wb = (load_checkpoint(r / "checkpoints")["objects"]["model"] for r in (a, b))
    assert wa.keys() == wb.keys() and [k for k in wa if not torch.equal(wa[k], wb[k])] == []
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "%|" not in line]
    assert len(err) == 1 and err[0].startswith("care-ssl pretrain: error: "), err
    return err[0]


@pytest.fixture(scope="module")
def saved_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("saved") / "run"
    torch.set_num_threads(1)
    assert main(args(data, out, "--max-steps", "1")) == 0
    return out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--batch-size", "4"], "--batch-size was 8 in the saved run, now 4"),
        (["--seed", "1"], "--seed was 0 in the saved run, now 1"),
        (["--lr", "0.1"], "--lr was unset (the default) in the saved run, now 0.1"),
        (["--epochs", "3"], "--epochs was 2 in the saved run, now 3"),
        (["--model", "resnet10t"], "--model was test_resnet in the saved run, now resnet10t"),
    ],
)
def test_resume_with_a_changed_setting_is_refused(
    data: Path, saved_run: Path, capsys, change: list[str], message: str
) -> None:
    config = (saved_run / "config.json").read_text()
    assert main([*args(data, saved_run, "--max-steps", "1", "--resume"), *change]) == 2
    assert one_error_line(capsys) == (
        f"care-ssl pretrain: error: cannot resume: {message} (start a new --out to change it)"
    )
    assert (saved_run / "config.json").read_text() == config  # not rewritten


def test_a_second_run_on_the_same_out_is_refused(data: Path, tmp_path: Path, capsys) -> None:
    with RunLock(tmp_path):
        assert main(args(data, tmp_path)) == 2
    assert f"is in use by another run (pid {os.getpid()} on" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch-size", "1"], "--batch-size must be at least 2: the BatchNorm layers"),
        (["--img-size", "1"], "--img-size 1 does not fit CARE: "),
    ],
)
def test_more_mistakes_are_one_line(
    data: Path, tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    assert main([*args(data, tmp_path), *extra]) == 2
    assert message in one_error_line(capsys)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[1]", "is not a care-ssl pretrain config"),
        ('{"model": "resnet18"}', "(an object with model, img_size"),
    ],
)
def test_export_of_a_run_with_a_bad_config_is_one_line(
    saved_run: Path, tmp_path: Path, capsys, config: str, message: str
) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for p in (saved_run / "checkpoints").iterdir():
        (run / "checkpoints" / p.name).write_bytes(p.read_bytes())
    (run / "config.json").write_text(config)
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "bb")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("care-ssl export: error: ") and message in err, err


def test_kill_9_loop_then_sigterm_then_resume_equals_an_uninterrupted_run(
    data: Path, tmp_path: Path, capsys
) -> None:
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    cmd = [sys.executable, "-m", "care_ssl", *args(data, killed, epochs=10)]
    torn = kill_loop(cmd, killed, kills=5, seed=1)
    assert torn >= 1, "no kill landed during a write"
    # the last kill's unfinished write, or one like it (earlier ones went at each restart)
    stale = temp_files(killed) or {killed / "checkpoints" / ".ckpt-00000099.json.k1ll3d00.tmp"}
    for p in stale:
        p.touch()
    # SIGTERM: the step finishes, a checkpoint of it is saved, exit status 130
    status, err, start, stopped = stop_by_signal(cmd, killed, signal.SIGTERM)
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
    records = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 31))
    assert [r["step"] for r in records if "knn_acc" in r] == [4, 8, 12, 16, 20, 24, 28, 30]
