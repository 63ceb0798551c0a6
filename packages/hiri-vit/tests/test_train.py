"""``hiri-vit train``: a real 2-process torchrun, exact resume, saved weights timm reads, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from ctxnets_shared.training import load_checkpoint
from hiri_vit.train import RESUME_KEYS, build_parser, main

# resnet10t is small; 32x32 digits, 8 per batch keep each step cheap on CPU
BASE = ["train", "--model", "resnet10t", "--data", "digits", "--img-size", "32", "--batch-size", "8"]
BASE += ["--no-progress"]
BASE += ["--ema-decay", "0.9", "--eval"]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-equal reductions between the compared runs
    yield
    torch.set_num_threads(before)


def test_torchrun_two_processes_identical_weights(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "hiri_vit.train", *BASE, "--max-steps", "3", "--save-every", "2", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 3
    rank0, rank1 = summary["weights_sha256"]
    assert rank0 == rank1  # DDP (with synchronised BatchNorm) kept both ranks' weights identical
    assert summary["val_acc"] is not None
    state = load_checkpoint(tmp_path / "checkpoints")
    assert state["progress"]["world_size"] == 2 and len(state["rng"]) == 2
    assert state["progress"]["step"] == 3
    assert "distiller" in state["objects"]  # EMA teacher state is part of the checkpoint


def test_resume_equals_uninterrupted_and_timm_reads_the_model(tmp_path: Path, one_thread) -> None:
    common = [*BASE, "--max-steps", "4", "--save-every", "2", "--no-eval"]
    assert main([*common, "--out", str(tmp_path / "straight")]) == 0
    assert main([*common, "--out", str(tmp_path / "halves"), "--stop-after", "2"]) == 0
    assert json.loads((tmp_path / "halves" / "checkpoints" / "latest.json").read_text())["step"] == 2
    assert main([*common, "--out", str(tmp_path / "halves"), "--resume"]) == 0
    for part in ("model", "teacher"):
        a = load_file(tmp_path / "straight" / part / "model.safetensors")
        b = load_file(tmp_path / "halves" / part / "model.safetensors")
        assert a.keys() == b.keys()
        assert [k for k in a if not torch.equal(a[k], b[k])] == []
    metrics = [json.loads(line) for line in (tmp_path / "halves" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    # the saved folder is timm's local-dir layout, and training moved the weights
    model = timm.create_model(f"local-dir:{tmp_path / 'straight' / 'model'}", pretrained=True)
    assert model.num_classes == 10
    sd = model.state_dict()
    saved = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    assert sd.keys() == saved.keys() and all(torch.equal(sd[k], v) for k, v in saved.items())
    torch.manual_seed(0)
    fresh = timm.create_model("resnet10t", num_classes=10)
    assert not torch.equal(fresh.fc.weight, sd["fc.weight"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "no_such_net"], "unknown model 'no_such_net'"),
        (["--data", "{empty}"], "no images found"),
        (["--data", "{missing}"], "data folder not found"),
        (["--batch-size", "7"], "must be even"),
        (["--img-size", "0"], "--img-size must be at least 1"),
        (["--alpha", "2"], "--alpha must be in [0, 1]"),
        (["--warmup-epochs", "-1"], "--warmup-epochs must be >= 0, got -1.0"),
        (["--resume"], "no checkpoint"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    extra = [e.format(empty=tmp_path / "empty", missing=tmp_path / "nope") for e in extra]
    assert main([*BASE, "--max-steps", "1", "--out", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hiri-vit train: error: ") and message in err and "\n" not in err


def test_without_distillation_or_mixing(tmp_path: Path) -> None:
    args = [*BASE, "--max-steps", "1", "--no-ema-distill", "--mixup", "0", "--cutmix", "0", "--no-eval"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "teacher").exists() and (tmp_path / "model" / "model.safetensors").is_file()
    assert "distiller" not in load_checkpoint(tmp_path / "checkpoints")["objects"]
    # config.json: every flag, and what the run resolved (device, AMP off on the CPU, the size trained)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"] == "resnet10t" and config["data"] == "digits" and config["lr"] == 1e-3
    assert config["img_size"] == 32 and config["device"] == "cpu" and config["amp"] is False
    assert config["total_steps"] == 1 and config["warmup_steps"] == 1  # 5% of 1 step, at least one
    assert config["world_size"] == 1 and config["global_batch_size"] == 8
    # metrics.png: loss and lr only (no validation ran: its panels are hidden), side by side
    with Image.open(tmp_path / "metrics.png") as png:
        width, height = png.size
    assert 2 * 400 <= width <= 2 * 480 and height <= 400, png.size


def help_text(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train", "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys)
    for shown in [
        "--img-size IMG_SIZE square input side (default: 32)",
        "--batch-size BATCH_SIZE per process (default: 32)",
        "--lr LR AdamW peak learning rate (not scaled by the batch) (default: 0.001)",
        "--amp, --no-amp bfloat16 autocast on CUDA (no effect on the CPU) (default: False)",
        "--warmup-epochs WARMUP_EPOCHS linear warm-up from lr/1000 (default: 5% of the steps)",
        "--ema-distill, --no-ema-distill EMA distillation (default: True)",
        "(default: auto)",
        "--workers WORKERS DataLoader worker processes (per process) (default: 0)",
        "--no-progress no progress bar",
    ]:
        assert shown in text, shown
    assert "--warmup-steps" not in text and "--stop-after" not in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--data", "digits"], "the following arguments are required: --model"),
        (["train", "--model", "resnet10t"], "the following arguments are required: --data"),
        (["train", *BASE[1:], "--warmup-steps", "5"], "unrecognized arguments: --warmup-steps 5"),
        (["train", *BASE[1:], "--device", "gpu"], "expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    ],
)
def test_parser_refuses(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_shared_flags() -> None:
    a = build_parser().parse_args(BASE)
    assert (a.workers, a.amp, a.device, a.warmup_epochs, a.no_progress) == (0, False, "auto", None, True)
    a = build_parser().parse_args(
        [*BASE, "--amp", "--workers", "2", "--device", "cpu", "--warmup-epochs", "5"]
    )
    assert (a.amp, a.workers, a.device, a.warmup_epochs) == (True, 2, "cpu", 5.0)
    assert build_parser().parse_args([*BASE, "--amp", "--no-amp"]).amp is False
    assert "warmup_epochs" in RESUME_KEYS and "amp" in RESUME_KEYS and "warmup_steps" not in RESUME_KEYS
    assert {"workers", "device", "no_progress"}.isdisjoint(RESUME_KEYS)
