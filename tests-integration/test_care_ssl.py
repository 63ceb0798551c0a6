"""care-ssl around another ctxnets package's backbone, found through the entry points (no import)."""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from care_ssl import CARE
from ctxnets_shared.weights import load_pretrained


def test_care_pretrains_and_exports_a_cotnet(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = CARE("cotnet50", img_size=32, hidden_dim=32, proj_dim=16, depth=2, dim_head=8)
    assert m.backbone.c4_shape[0] == 1024 and m.backbone.c5_shape[0] == 2048
    assert m.transformer.blocks[0].expand[0].out_channels == 2048  # T-stream maps to the C5 width
    opt = torch.optim.SGD(m.online_parameters(), lr=0.01)
    loss = m(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)).total
    loss.backward()
    opt.step()
    m.update_momentum(0, 1)
    out = m.export_backbone(tmp_path / "bb")
    x = torch.randn(1, 3, 64, 64)
    ours = m.backbone.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(timm.create_model(f"local-dir:{out}", pretrained=True).eval()(x), ours(x))
        torch.testing.assert_close(load_pretrained(out)(x), ours(x))
