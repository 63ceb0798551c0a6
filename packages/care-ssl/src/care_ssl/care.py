"""CARE: CNN Attention REvitalization, a C-stream (BYOL) and a T-stream (transformer) trained side by side.

Paper: "Revitalizing CNN Attentions via Transformers in Self-Supervised Visual Representation Learning"
(Ge et al., NeurIPS 2021), Fig. 2, Sec. 3. Details follow the official code (ChongjianGE/CARE) where it
differs from the text: the T-stream branches off C4, L_att is an MSE on normalised outputs, and the
momentum average covers backbone, transformer and projectors (not predictors, not BN buffers).

Gradient paths (Sec. 3.3): L_c trains the backbone and the C heads; L_t the transformer, the T heads and
the backbone up to C4; L_att the backbone and the C heads only (the T-stream side is detached). The
momentum (target) network gets no gradient at all.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from care_ssl.backbone import Backbone, create_backbone
from care_ssl.heads import MLPHead
from care_ssl.losses import CareLosses, attention_loss, symmetric_byol_loss
from care_ssl.tstream import POS_EMBEDS, TStream

__all__ = ["CARE", "DESIGNS", "MODES", "momentum_at"]

MODES = ("care", "byol")
DESIGNS = ("parallel", "sequential")


def momentum_at(step: int, total_steps: int, base: float = 0.99) -> float:
    """tau = 1 - (1 - base) (cos(pi t / T) + 1) / 2: ``base`` at step 0, 1 at step T (paper Sec. 4)."""
    if total_steps < 1 or not 0 <= step <= total_steps:
        raise ValueError(f"step must be in [0, total_steps] with total_steps >= 1, got {step}/{total_steps}")
    return 1 - (1 - base) * (math.cos(math.pi * step / total_steps) + 1) / 2


class CARE(nn.Module):
    """The CARE (or plain BYOL) pretraining model around any timm backbone.

    Args:
        backbone: timm model name (built with ``num_classes=0``) or such a model.
        img_size: square input side; the T-stream's positional tables are sized from the real C4 map.
        in_chans: input channels.
        mode: "care" (C- and T-stream) or "byol" (C-stream only, the baseline).
        lam: weight lambda of L_att (paper Table 6: 100).
        depth: T-stream blocks n (paper Table 7: 5).
        pos_embed: "absolute" (default, as the official code) or "relative" (paper Table 8).
        design: "parallel" (T-stream off C4, beside the last stage) or "sequential" (off C5).
        hidden_dim: projector/predictor hidden width (4096 in the paper).
        proj_dim: projector/predictor output width (256 in the paper).
        heads: T-stream attention heads (4 in the paper).
        dim_head: width of each T-stream head (128 in the paper).
        base_momentum: tau at step 0 (0.99).
        backbone_kwargs: extra ``timm.create_model`` kwargs when ``backbone`` is a name.
    """

    def __init__(
        self,
        backbone: str | nn.Module,
        img_size: int = 224,
        in_chans: int = 3,
        mode: str = "care",
        lam: float = 100.0,
        depth: int = 5,
        pos_embed: str = "absolute",
        design: str = "parallel",
        hidden_dim: int = 4096,
        proj_dim: int = 256,
        heads: int = 4,
        dim_head: int = 128,
        base_momentum: float = 0.99,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if design not in DESIGNS:
            raise ValueError(f"design must be one of {DESIGNS}, got {design!r}")
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be one of {POS_EMBEDS}, got {pos_embed!r}")
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"base_momentum must be in [0, 1], got {base_momentum}")
        self.mode, self.design, self.lam, self.base_momentum = mode, design, float(lam), base_momentum
        self.backbone_kwargs = dict(backbone_kwargs or {})
        if isinstance(backbone, str):
            backbone = create_backbone(backbone, in_chans=in_chans, **self.backbone_kwargs)
        self.backbone = Backbone(backbone, img_size=img_size, in_chans=in_chans)
        self.img_size, self.in_chans = self.backbone.img_size, self.backbone.in_chans

        # C-stream: projector_1 + predictor_1 (Fig. 2 upper branch)
        self.c_projector = MLPHead(self.backbone.num_features, hidden_dim, proj_dim)
        self.c_predictor = MLPHead(proj_dim, hidden_dim, proj_dim)
        target = {"backbone": self.backbone, "c_projector": self.c_projector}
        if mode == "care":
            c5_width = self.backbone.c5_shape[0]
            t_in = self.backbone.c4_shape if design == "parallel" else self.backbone.c5_shape
            self.transformer = TStream(
                t_in[0],
                c5_width,
                (t_in[1], t_in[2]),
                depth=depth,
                downsample=design == "parallel",
                heads=heads,
                dim_head=dim_head,
                pos_embed=pos_embed,
            )
            self.t_projector = MLPHead(c5_width, hidden_dim, proj_dim)
            self.t_predictor = MLPHead(proj_dim, hidden_dim, proj_dim)
            target.update(transformer=self.transformer, t_projector=self.t_projector)
        # momentum network: starts as a hard copy, never receives gradients
        self.target = nn.ModuleDict({k: copy.deepcopy(m) for k, m in target.items()})
        self.target.requires_grad_(False)

    # --- the two networks -------------------------------------------------------------------------------

    def _online(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        c4, c5, emb = self.backbone(x)
        c = F.normalize(self.c_predictor(self.c_projector(emb)), dim=-1)
        if self.mode == "byol":
            return c, None
        t_map = self.transformer(c4 if self.design == "parallel" else c5)
        t = F.normalize(self.t_predictor(self.t_projector(t_map.mean(dim=(2, 3)))), dim=-1)
        return c, t

    @torch.no_grad()
    def _target(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        c4, c5, emb = self.target["backbone"](x)
        z = F.normalize(self.target["c_projector"](emb), dim=-1)
        if self.mode == "byol":
            return z, None
        t_map = self.target["transformer"](c4 if self.design == "parallel" else c5)
        return z, F.normalize(self.target["t_projector"](t_map.mean(dim=(2, 3))), dim=-1)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless x is (B >= 2, in_chans, img_size, img_size)."""
        expected = (self.in_chans, self.img_size, self.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected or x.shape[0] < 2:
            raise ValueError(
                f"CARE was built for views of shape (B>=2, {expected[0]}, {expected[1]}, {expected[2]}) (the "
                f"T-stream's positional tables are sized to it; BatchNorm needs B >= 2), got {tuple(x.shape)}"
            )

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> CareLosses:
        """Two augmented views (B, C, H, W) each -> the losses of paper Eq. 5."""
        self.check_input(view1)
        self.check_input(view2)
        c1, t1 = self._online(view1)
        c2, t2 = self._online(view2)
        z1, zt1 = self._target(view1)
        z2, zt2 = self._target(view2)
        loss_c = symmetric_byol_loss(c1, z2, c2, z1)
        if self.mode == "byol":
            zero = loss_c.new_zeros(())
            return CareLosses(total=loss_c, c=loss_c, t=zero, att=zero)
        assert t1 is not None and t2 is not None and zt1 is not None and zt2 is not None
        loss_t = symmetric_byol_loss(t1, zt2, t2, zt1)
        loss_att = attention_loss(c1, t1, c2, t2)
        return CareLosses(total=loss_c + loss_t + self.lam * loss_att, c=loss_c, t=loss_t, att=loss_att)

    def train(self, mode: bool = True) -> CARE:
        """As nn.Module.train, except the momentum network always stays in train mode (batch statistics)."""
        super().train(mode)
        self.target.train(True)
        return self

    # --- momentum update ---------------------------------------------------------------------------------

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) module pairs that the moving average covers: backbone, transformer, projectors."""
        return [(getattr(self, k), m) for k, m in self.target.items()]

    @torch.no_grad()
    def update_momentum(self, step: int, total_steps: int) -> float:
        """theta_target <- tau theta_target + (1 - tau) theta_online, tau = momentum_at(step, total_steps).

        Parameters only: BN running statistics of the target stay its own. Returns tau.
        """
        tau = momentum_at(step, total_steps, self.base_momentum)
        for online, target in self.momentum_pairs():
            for p_o, p_t in zip(online.parameters(), target.parameters()):
                p_t.lerp_(p_o.detach(), 1.0 - tau)
        return tau

    # --- what is kept ------------------------------------------------------------------------------------

    def online_parameters(self) -> list[nn.Parameter]:
        """Everything the optimiser trains: backbone, transformer, both projectors and both predictors."""
        return [p for p in self.parameters() if p.requires_grad]

    def convert_sync_batchnorm(
        self, convert: Callable[[nn.Module], nn.Module] = nn.SyncBatchNorm.convert_sync_batchnorm
    ) -> CARE:
        """Synchronised BN in backbones and heads (online and target); the transformer keeps plain BN.

        Args:
            convert: module -> module with every BatchNorm replaced (torch's SyncBatchNorm by default; on
                CPU ``ctxnets_shared.training.sync_batchnorm.convert_sync_batchnorm``).
        """
        for name in ("backbone", "c_projector", "c_predictor", "t_projector", "t_predictor"):
            if hasattr(self, name):
                setattr(self, name, convert(getattr(self, name)))
        for name in ("backbone", "c_projector", "t_projector"):
            if name in self.target:
                self.target[name] = convert(self.target[name])
        return self

    def export_backbone(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write the online backbone (no classifier) as a timm ``local-dir`` safetensors folder.

        ``timm.create_model("local-dir:DIR", pretrained=True)`` and ``ctxnets_shared.weights.load_pretrained``
        read it. It is saved with ``num_classes=0``; for a head pass ``num_classes=N`` when loading (the new
        classifier starts from its default init).
        """
        from care_ssl.export import export_backbone

        return export_backbone(self, out_dir)
