"""``care-ssl pretrain | probe | export`` on the embedded digits: real processes, torchrun and files."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from care_ssl.cli import main
from ctxnets_shared.training import load_checkpoint, read_metrics
from ctxnets_shared.weights import load_pretrained, load_safetensors

HERE = Path(__file__).parent
# resnet18 at 32 px with thin heads and a 2-block T-stream: seconds per run on a shared CPU
TINY = [
    "--model", "resnet18", "--data", "digits", "--img-size", "32", "--batch-size", "16", "--hidden-dim", "64",
    "--proj-dim", "32", "--depth", "2", "--heads", "2", "--dim-head", "16", "--device", "cpu",
]  # fmt: skip


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "care_ssl", *args], capture_output=True, text=True, env=env(), timeout=timeout
    )


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints")["objects"]["model"]


def test_pretraining_a_few_steps_lowers_the_loss_and_writes_the_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["pretrain", *TINY, "--max-steps", "12", "--lr", "0.1", "--knn-every", "12", "--out", str(out)]
    assert main(args) == 0
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 13))
    first, last = records[0], records[-1]
    assert {"loss", "loss_c", "loss_t", "loss_att", "lr", "momentum"} <= set(first)
    assert sum(r["loss"] for r in records[-3:]) < sum(r["loss"] for r in records[:3])
    # tau after step t (0-based) of T: 1 - 0.01 (cos(pi t / T) + 1) / 2, from 0.99 towards 1
    assert first["momentum"] == pytest.approx(0.99, abs=1e-6)
    assert last["momentum"] == pytest.approx(1 - 0.01 * (math.cos(math.pi * 11 / 12) + 1) / 2, abs=1e-6)
    assert 0 <= last["knn_acc"] <= 100
    # metrics.png: a grid of the six panels (loss, L_c, L_t, L_att, kNN, lr), three side by side
    with Image.open(out / "metrics.png") as png:
        width, height = png.size
    assert width <= 3 * 480 and 2 * 320 <= height <= 2 * 400, png.size
    # the exported backbone is the checkpoint's online backbone
    bb = load_pretrained(out / "backbone")
    ckpt = final_weights(out)
    for k, v in bb.state_dict().items():
        torch.testing.assert_close(v, ckpt[f"backbone.model.{k}"], rtol=0, atol=0)
    # probe it (kNN + linear) through the command
    probe = ["probe", "--weights", str(out / "backbone"), "--data", "digits", "--img-size", "32"]
    assert main([*probe, "--epochs", "2", "--device", "cpu"]) == 0


def test_two_process_torchrun_on_cpu_keeps_ranks_identical(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(HERE / "torchrun_pretrain.py"), str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (load_safetensors(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    assert r0.keys() == r1.keys()
    for k in r0:
        # the transformer keeps plain (per-process) BN as in the official code: its running statistics
        # are each rank's own after the last step; every parameter and every synchronised buffer agrees
        if ".transformer." in f".{k}" and ("running_" in k or "num_batches" in k):
            continue
        assert torch.equal(r0[k], r1[k]), k
    assert (tmp_path / "rank0.bn").read_text() == "['CollectiveBatchNorm']|['BatchNorm2d']"
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_export_command_from_a_run_and_timm_load(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["pretrain", *TINY, "--max-steps", "1", "--out", str(run), "--mode", "byol"]) == 0
    # config.json records what the run resolved: the paper's lr 0.05 x 16 / 256, the device, AMP off on
    # the CPU, the image size and the digits crop scale
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == pytest.approx(0.05 * 16 / 256) and config["device"] == "cpu"
    assert config["amp"] is False and config["img_size"] == 32 and config["crop_scale"] == [0.3, 1.0]
    assert config["world_size"] == 1 and config["total_steps"] == 1 and config["warmup_steps"] == 0
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "bb")]) == 0
    model = timm.create_model(f"local-dir:{tmp_path / 'bb'}", pretrained=True).eval()
    ref = load_pretrained(run / "backbone")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no_such_net"], "unknown backbone 'no_such_net'"),
        (["--model", "vit_tiny_patch16_224"], r"no stage-4 \(stride 16\)"),
        (["--data", "{empty}"], "empty|no image|no class"),
        (["--data", "{missing}"], "not found|does not exist|no such"),
    ],
)
def test_user_mistakes_give_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty", missing=tmp_path / "missing") for a in args]
    base = ["pretrain", "--model", "resnet18", "--data", "digits", "--img-size", "32"]
    assert main([*base, "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("care-ssl pretrain: error: "), err
    import re

    assert re.search(message, err[0], re.IGNORECASE), err[0]


def test_console_script_exit_status(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = run_cli(
        "pretrain", "--model", "resnet18", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "error" in done.stderr
