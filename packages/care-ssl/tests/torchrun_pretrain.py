"""Run by test_pretrain.py under torchrun: a short CARE pretraining, then each rank saves its weights."""

from __future__ import annotations

import sys
from pathlib import Path

import safetensors.torch
import torch.distributed as dist

from care_ssl.train import PretrainConfig, pretrain

if __name__ == "__main__":
    out = Path(sys.argv[1])
    cfg = PretrainConfig(
        model="resnet18",
        data="digits",
        out=str(out),
        img_size=32,
        epochs=1,
        max_steps=3,
        batch_size=8,
        hidden_dim=64,
        proj_dim=32,
        depth=2,
        heads=2,
        dim_head=16,
        device="cpu",
    )
    # pretrain() tears the process group down at the end: read the rank first
    import os

    rank = int(os.environ["RANK"])
    model = pretrain(cfg)
    assert not dist.is_initialized()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(out / f"rank{rank}.safetensors"))
    # the CPU run synchronised BN through collectives in the backbone and heads, plain BN in the transformer
    kinds = {type(m).__name__ for m in model.backbone.modules()}
    t_kinds = {type(m).__name__ for m in model.transformer.modules()}
    (out / f"rank{rank}.bn").write_text(
        f"{sorted(kinds & {'CollectiveBatchNorm', 'BatchNorm2d'})}|"
        f"{sorted(t_kinds & {'CollectiveBatchNorm', 'BatchNorm2d'})}"
    )
