"""Compositions across the paper packages, each as a researcher would write it.

Every test fails if the composition silently did nothing: the parameter count grows by exactly the inserted
blocks' own counts, and the inserted blocks receive gradients.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn

from ctxnets_shared.packages import discover_packages
from ctxnets_shared.profiling import count_params
from ctxnets_shared.testing import cuda_autocast_policy, cuda_like_autocast


def _gc_blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__ == "GlobalContextBlock"]


# model -> (stages that get GC blocks, expected number of blocks there, input side)
GC_HOSTS = {
    "hiri_vit_s": ((2, 3, 4), None, 128),  # the headline composition: GC in HIRI-ViT's stages 3-5
    "cotnet50": ((2, 3), 6 + 3, 64),
    "container_v1_light": ((2, 3), None, 64),
}


@pytest.mark.parametrize("name", list(GC_HOSTS))
def test_gc_blocks_inside_another_papers_backbone(name: str) -> None:
    discover_packages()
    stages, n_expected, size = GC_HOSTS[name]
    torch.manual_seed(0)
    base = timm.create_model(name)
    with_gc = timm.create_model(name, attn_layer="gc", attn_stages=stages)
    blocks = _gc_blocks(with_gc)
    assert blocks, f"no GlobalContextBlock inside {name}"
    if n_expected is not None:
        assert len(blocks) == n_expected
    assert count_params(with_gc) - count_params(base) == sum(count_params(b) for b in blocks)
    with_gc.train()
    out = with_gc(torch.randn(2, 3, size, size))
    out.logsumexp(1).sum().backward()
    for b in blocks:  # the add-fusion's last conv starts at zero, but its gradient does not
        assert b.channel_add_conv[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", ["gc_resnet50", *GC_HOSTS])
def test_gc_blocks_train_under_cuda_autocast_policy(name: str, dtype: torch.dtype) -> None:
    """GC-ResNet-50 and GC blocks inside the other papers' backbones train under CUDA's autocast dtype
    policy (the GC softmax returns float32 beside bf16/fp16 activations), emulated on CPU."""
    discover_packages()
    stages, _, size = GC_HOSTS.get(name, ((1, 2, 3), None, 64))
    kwargs = {} if name == "gc_resnet50" else dict(attn_layer="gc", attn_stages=stages)
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).train()
    blocks = _gc_blocks(model)
    assert blocks
    # the policy stays on for backward: CoTNet's checkpointed stages recompute there under autocast
    with cuda_autocast_policy():
        with cuda_like_autocast(dtype):
            out = model(torch.randn(2, 3, size, size))
            loss = out.float().logsumexp(1).sum()
        loss.backward()
    assert torch.isfinite(out.float()).all()
    for b in blocks:
        for p in b.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all()
        assert b.conv_mask.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("name", list(GC_HOSTS))
def test_gc_blocks_start_as_the_identity_in_another_papers_backbone(name: str) -> None:
    """The host's weight init must not overwrite the GC block's zero init (GCNet, Sec. 4.3)."""
    discover_packages()
    stages, _, size = GC_HOSTS[name]
    model = timm.create_model(name, attn_layer="gc", attn_stages=stages).eval()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [
        b.register_forward_hook(lambda _m, args, out: seen.append((args[0], out))) for b in _gc_blocks(model)
    ]
    with torch.no_grad():
        model(torch.randn(2, 3, size, size))
    for h in hooks:
        h.remove()
    assert len(seen) == len(_gc_blocks(model)) > 0
    for x, out in seen:
        torch.testing.assert_close(out, x, rtol=0, atol=0)


def test_gc_composition_round_trips_by_name(tmp_path: Path) -> None:
    """The attention name is what config.json records, so the GC-in-HIRI-ViT variant reloads whole."""
    from ctxnets_shared.weights import load_pretrained, save_pretrained

    discover_packages()
    torch.manual_seed(0)
    model = timm.create_model("hiri_vit_s", attn_layer="gc", attn_stages=(2, 3, 4)).eval()
    for b in _gc_blocks(model):  # make the blocks matter for the output
        nn.init.normal_(b.channel_add_conv[-1].weight, std=0.05)
    save_pretrained(model, tmp_path / "m")
    x = torch.randn(1, 3, 128, 128)
    back = timm.create_model(f"local-dir:{tmp_path / 'm'}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x))
        torch.testing.assert_close(load_pretrained(tmp_path / "m")(x), model(x))


def test_ema_distillation_trains_a_cotnet(tmp_path: Path) -> None:
    """hiri-vit's training command (EMA distillation, Mixup/CutMix) on a model of another package."""
    exe = shutil.which("hiri-vit")
    assert exe, "the hiri-vit console script is not installed"
    cmd = [exe, "train", "--model", "cotnet50", "--data", "digits", "--img-size", "32", "--max-steps", "2"]
    cmd += ["--batch-size", "4", "--ema-distill", "--no-progress", "--no-eval", "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["model"] == "cotnet50" and summary["steps"] == 2
    assert (tmp_path / "teacher" / "model.safetensors").is_file()
    discover_packages()  # registers cotnet50 in this process too
    student = timm.create_model(f"local-dir:{tmp_path / 'model'}", pretrained=True)
    start = timm.create_model("cotnet50", num_classes=student.num_classes)
    moved = [k for k, v in student.state_dict().items() if v.is_floating_point() and k in start.state_dict()]
    assert moved, "no weights in the trained model"


def test_both_training_commands_spell_the_shared_flags_the_same() -> None:
    """hiri-vit train and care-ssl pretrain: the same option strings, types, defaults-in-help for the
    flags they share; --model and --data required in both."""
    import argparse

    from care_ssl.cli import build_parser as care_parser
    from hiri_vit.train import build_parser as hiri_parser

    def actions(parser: argparse.ArgumentParser, command: str) -> dict[str, argparse.Action]:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        shown = [a for a in sub.choices[command]._actions if a.help is not argparse.SUPPRESS]
        return {a.dest: a for a in shown}

    hiri, care = actions(hiri_parser(), "train"), actions(care_parser(), "pretrain")
    for dest in ("device", "workers", "amp", "warmup_epochs", "no_progress"):
        h, c = hiri[dest], care[dest]
        assert h.option_strings == c.option_strings and type(h) is type(c) and h.type is c.type, dest
    assert hiri["amp"].option_strings == ["--amp", "--no-amp"]
    for dest in ("model", "data"):
        assert hiri[dest].required and care[dest].required, dest


@pytest.mark.parametrize("name", ["cotnet50", "gc_resnet50", "hiri_vit_s", "container_v1_light"])
def test_care_pretraining_steps_on_each_packages_backbone(name: str) -> None:
    from care_ssl import CARE

    discover_packages()
    torch.manual_seed(0)
    size = 128 if name == "hiri_vit_s" else 64
    care = CARE(name, img_size=size, hidden_dim=32, proj_dim=16, depth=1, dim_head=8)
    opt = torch.optim.SGD(care.online_parameters(), lr=0.01)
    before = [p.detach().clone() for p in care.backbone.parameters()]
    losses = care(torch.randn(2, 3, size, size), torch.randn(2, 3, size, size))
    assert torch.isfinite(losses.total)
    losses.total.backward()
    opt.step()
    care.update_momentum(0, 10)
    changed = sum(not torch.equal(a, b) for a, b in zip(before, care.backbone.parameters()))
    assert changed > 0, "no backbone weight moved after a CARE step"


def test_gcnet_analyze_names_the_attention_another_papers_model_has(tmp_path: Path, capsys) -> None:
    """gcnet's analysis on a CoTNet (cot installed beside it): one line naming the CoT layers it found."""
    from gcnet.cli import main

    discover_packages()
    assert main(["analyze", "cotnet50", "--out", str(tmp_path / "x"), "--img-size", "64"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gcnet: error: ") and err.count("\n") == 1
    assert "it has CotLayer x16: local K x K attention per position" in err
    assert not (tmp_path / "x").exists()
