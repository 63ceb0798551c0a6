"""EMA distillation (HIRI-ViT, Yao et al., TPAMI; paper Section 4.5, Eq. 4-5), for any classifier.

The teacher is an exponential moving average (EMA) of the student, never trained by gradients. For a
CutMix/Mixup sample x~ = M * x_a + (1 - M) * x_b with label y~ = lambda * y_a + (1 - lambda) * y_b
(Eq. 4), the teacher sees the original x_a and x_b *without* its final average pooling and gives
per-location class-probability maps P_a, P_b. The teacher target is

    y^ = AvgPool(M * P_a + (1 - M) * P_b)                                  (Eq. 5)

with M resized to the map (area average; for Mixup M is the constant lambda), and the student is trained
on y- = alpha * y~ + (1 - alpha) * y^ with a soft-target cross-entropy. alpha and the EMA decay are not
given in the paper; the defaults here are alpha = 0.5 and decay = 0.9998 (our choice, see the spec).

Per-location logits. :func:`per_location_logits` maps an image batch to (B, num_classes, h, w) logits:

1. if the model defines ``forward_head_dense(features) -> (B, K, h, w)`` (the hiri-vit models do: the
   head's LayerNorm and fc applied to every stage-5 token, skipping the class-attention block), that is
   applied to ``forward_features(x)``;
2. for a (B, C, h, w) feature map (or (B, h, w, C) when ``model.output_fmt == "NHWC"``) the model's own
   ``forward_head`` is applied to every location as a 1x1 map: pooling a 1x1 map is the identity, so
   this is "the head without the average pooling" for every timm CNN whose head is pool -> (norm) -> fc;
3. for (B, N, C) tokens (timm ViTs) the prefix tokens (``num_prefix_tokens``) are dropped and
   ``fc_norm`` (if any) and the classifier are applied to every patch token.

Anything else (e.g. an attention-pooling head) needs a ``forward_head_dense`` method or a callable
``per_location=(model, x) -> (B, K, h, w)`` passed to :class:`EMADistiller`.

Mixing. timm's :class:`~timm.data.Mixup` does not expose the CutMix box; :class:`MaskedMixup` is a
drop-in subclass (same arguments, batch mode) that mixes out of place (the teacher needs the originals)
and returns the mask M and lambda in a :class:`MixedBatch`. Like timm, it pairs sample i with sample
B-1-i (the flipped batch), so one teacher forward gives both P_a and P_b = P_a.flip(0).

DDP: build the distiller from the unwrapped model; every rank computes its targets from its own batch
(no communication) and updates its EMA after the optimizer step, so the teachers stay identical.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.mixup import cutmix_bbox_and_lam, mixup_target
from timm.utils import ModelEmaV3
from torch import Tensor

__all__ = [
    "EMADistiller",
    "MaskedMixup",
    "MixedBatch",
    "PerLocationLogits",
    "distill_target",
    "mixed_teacher_target",
    "per_location_logits",
]

PerLocationLogits = Callable[[nn.Module, Tensor], Tensor]
"""``(model, images (B, C, H, W)) -> logits (B, num_classes, h, w)``: the head applied per location."""


def per_location_logits(model: nn.Module, x: Tensor) -> Tensor:
    """Class logits at every location of the last feature map (the head without average pooling).

    Args:
        model: a timm-contract classifier (see the module docstring for the three supported layouts).
        x: images (B, C, H, W).

    Returns:
        (B, num_classes, h, w) logits.
    """
    m: Any = model  # timm-contract methods, not declared on nn.Module
    feats = m.forward_features(x)
    dense = getattr(m, "forward_head_dense", None)
    if callable(dense):
        return dense(feats)
    if feats.dim() == 4:
        nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"
        per_loc = feats if nhwc else feats.permute(0, 2, 3, 1)  # (B, h, w, C)
        b, h, w, c = per_loc.shape
        # every location becomes a 1x1 map of its own: the head's pooling is then the identity
        pix = per_loc.reshape(b * h * w, 1, 1, c)
        logits = m.forward_head(pix if nhwc else pix.permute(0, 3, 1, 2))
        return logits.reshape(b, h, w, -1).permute(0, 3, 1, 2)
    if feats.dim() == 3:
        tokens = feats[:, int(getattr(model, "num_prefix_tokens", 0)) :]
        n = tokens.shape[1]
        h = round(math.sqrt(n * x.shape[-2] / x.shape[-1]))
        if h < 1 or n % h:
            size = f"{x.shape[-2]}x{x.shape[-1]}"
            raise ValueError(f"cannot arrange {n} patch tokens on a grid for a {size} input")
        fc_norm = getattr(model, "fc_norm", None)
        if isinstance(fc_norm, nn.Module):
            tokens = fc_norm(tokens)
        logits = m.get_classifier()(tokens)
        return logits.reshape(x.shape[0], h, n // h, -1).permute(0, 3, 1, 2)
    raise ValueError(
        f"forward_features gave a {feats.dim()}-D output; per-location logits need (B, C, h, w) maps, "
        "(B, N, C) tokens, a forward_head_dense method, or a per_location callable"
    )


def mixed_teacher_target(p_a: Tensor, p_b: Tensor, mask: Tensor) -> Tensor:
    """Eq. 5: AvgPool(M * P_a + (1 - M) * P_b).

    Args:
        p_a: teacher probabilities for x_a, (B, K, h, w).
        p_b: teacher probabilities for x_b, (B, K, h, w).
        mask: M, 1 where the mixed image shows x_a: (H, W), (1, 1, H, W) or (B, 1, H, W) at any
            resolution (area-averaged to (h, w)); a scalar lambda for Mixup.

    Returns:
        (B, K) teacher target (rows sum to 1).
    """
    if not isinstance(mask, Tensor) or mask.dim() == 0:
        m = torch.as_tensor(mask, dtype=p_a.dtype, device=p_a.device).view(1, 1, 1, 1)
    else:
        m = mask.to(p_a)
        m = m.view(1, 1, *m.shape) if m.dim() == 2 else m
        if m.shape[-2:] != p_a.shape[-2:]:
            m = F.adaptive_avg_pool2d(m, (int(p_a.shape[-2]), int(p_a.shape[-1])))
    return (m * p_a + (1 - m) * p_b).mean(dim=(2, 3))


def distill_target(mixed_label: Tensor, teacher_target: Tensor, alpha: float) -> Tensor:
    """y- = alpha * y~ + (1 - alpha) * y^ (paper Section 4.5), both (B, K)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha * mixed_label + (1.0 - alpha) * teacher_target


@dataclass
class MixedBatch:
    """A CutMix/Mixup batch and how it was made.

    Attributes:
        x: mixed images (B, C, H, W).
        target: mixed soft labels y~ (B, K), label smoothing included.
        lam: lambda, the share of x_a (after the box correction for CutMix).
        mask: M (1, 1, H, W): 1 where x_a shows (CutMix box is 0), lambda everywhere for Mixup, 1 unmixed.
        kind: "cutmix", "mixup" or "none".
        box: CutMix box (y0, y1, x0, x1) holding x_b, or None.
    """

    x: Tensor
    target: Tensor
    lam: float
    mask: Tensor
    kind: str
    box: tuple[int, int, int, int] | None = None


class MaskedMixup(Mixup):
    """timm's Mixup/CutMix in batch mode that also returns the mask M (see :class:`MixedBatch`).

    Same constructor as :class:`timm.data.Mixup` (``mode`` must be "batch"). ``mix(x, y)`` returns a
    :class:`MixedBatch` and leaves ``x`` untouched; calling the object works as timm's Mixup and returns
    ``(x_mixed, target)``. Sample i is mixed with sample B-1-i. Random draws use numpy's global generator,
    as timm's do (so checkpointed RNG states cover them).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.mode != "batch":
            raise ValueError(f"MaskedMixup supports mode='batch' only (one mask a batch), got {self.mode!r}")

    def _draw(self) -> tuple[float, bool]:
        if not self.mixup_enabled or np.random.rand() >= self.mix_prob:
            return 1.0, False
        both = self.mixup_alpha > 0 and self.cutmix_alpha > 0
        cutmix = bool(np.random.rand() < self.switch_prob) if both else self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        if alpha <= 0:
            raise ValueError("MaskedMixup needs mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax")
        return float(np.random.beta(alpha, alpha)), cutmix

    def mix(self, x: Tensor, target: Tensor) -> MixedBatch:
        """Mix ``x`` (B, C, H, W) with its flipped batch; ``target`` holds class indices (B,)."""
        if x.dim() != 4 or len(x) % 2:
            raise ValueError(f"expected an even-sized (B, C, H, W) batch, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        lam, cutmix = self._draw()
        box = None
        if lam == 1.0:
            kind, mask = "none", x.new_ones(1, 1, h, w)
            mixed = x.clone()
        elif cutmix:
            (y0, y1, x0, x1), lam = cutmix_bbox_and_lam(
                x.shape, lam, ratio_minmax=self.cutmix_minmax, correct_lam=self.correct_lam
            )
            box = (int(y0), int(y1), int(x0), int(x1))
            kind, mask = "cutmix", x.new_ones(1, 1, h, w)
            mask[..., y0:y1, x0:x1] = 0
            mixed = mask * x + (1 - mask) * x.flip(0)
        else:
            kind, mask = "mixup", x.new_full((1, 1, h, w), lam)
            mixed = lam * x + (1 - lam) * x.flip(0)
        y = mixup_target(target, self.num_classes, lam, self.label_smoothing)
        return MixedBatch(mixed, y, float(lam), mask, kind, box)

    def __call__(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        out = self.mix(x, target)
        return out.x, out.target


class EMADistiller(nn.Module):
    """The EMA teacher and the EMA-distillation target (paper Section 4.5).

    Args:
        model: the student (unwrapped from DDP); the teacher starts as its copy.
        alpha: weight of the CutMix/Mixup label in the final target (1 = no distillation).
        decay: EMA decay of the teacher.
        per_location: ``(model, x) -> (B, K, h, w)`` logits; default :func:`per_location_logits`.
        warmup: timm's EMA warm-up (decay grows with the step), useful for short runs.
        device: where the teacher lives (default: the student's device).

    Use::

        distiller = EMADistiller(model)
        batch = mixup.mix(x, y)                            # MaskedMixup
        target = distiller.target(x, batch)                # teacher sees the originals, no grad
        loss = SoftTargetCrossEntropy()(model(batch.x), target)
        loss.backward(); optimizer.step(); distiller.update(model, step)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        alpha: float = 0.5,
        decay: float = 0.9998,
        per_location: PerLocationLogits | None = None,
        warmup: bool = False,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.alpha = alpha
        self.per_location = per_location or per_location_logits
        self.ema = ModelEmaV3(model, decay=decay, use_warmup=warmup, device=device)
        self.ema.requires_grad_(False)

    @property
    def teacher(self) -> nn.Module:
        """The EMA copy of the student (eval mode, no gradients)."""
        return self.ema.module

    def train(self, mode: bool = True) -> EMADistiller:
        super().train(mode)
        self.ema.module.eval()  # the teacher always predicts with its running statistics
        return self

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """Move the teacher towards the student (call after each optimizer step)."""
        self.ema.update(model, step=step)

    @torch.no_grad()
    def teacher_probs(self, x: Tensor) -> Tensor:
        """Per-location class probabilities of the teacher, (B, K, h, w)."""
        self.ema.module.eval()
        return self.per_location(self.ema.module, x).float().softmax(dim=1)

    @torch.no_grad()
    def teacher_target(self, x_a: Tensor, mask: Tensor, x_b: Tensor | None = None) -> Tensor:
        """Eq. 5 for originals ``x_a`` and ``x_b`` (default: ``x_a`` flipped, as Mixup pairs them)."""
        p_a = self.teacher_probs(x_a)
        p_b = p_a.flip(0) if x_b is None else self.teacher_probs(x_b)
        return mixed_teacher_target(p_a, p_b, mask)

    @torch.no_grad()
    def target(self, x: Tensor, batch: MixedBatch, x_b: Tensor | None = None) -> Tensor:
        """The final soft target alpha * y~ + (1 - alpha) * y^ for a batch mixed from originals ``x``."""
        if self.alpha == 1.0:
            return batch.target
        y_hat = self.teacher_target(x, batch.mask, x_b)
        return distill_target(batch.target, y_hat.to(batch.target.dtype), self.alpha)
