"""What a package declares about one of its models for the contract kit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelSpec"]


@dataclass(frozen=True)
class ModelSpec:
    """One registered model and the parts of the contract that apply to it.

    Attributes:
        name: the timm model name.
        img_size: side (or (H, W)) of the small input every check runs at; full-size models, small maps.
        batch_size: images per check batch (2: training-mode BatchNorm needs more than one value). Use 4
            for a model with a BatchNorm over pooled (B, C, 1, 1) values (split attention, an SE gate with
            a BatchNorm) or over 1x1 maps: with two values per channel some channels get nearly equal
            ones, where BatchNorm's gain approaches 1 / sqrt(eps) and paths that differ only in rounding
            drift apart (cot's test_contract.py).
        reductions: expected ``features_only`` reductions with the default ``out_indices``.
        output_strides: ``output_stride`` values the model must take (CNNs: 8 and 16); () for none.
        round_trip_kwargs: non-default constructor kwargs that must survive ``save_pretrained``.
        create_kwargs: kwargs for every model the kit builds (e.g. ``img_size`` for a ViT).
        min_img_size: the smallest side the model accepts; one pixel less must be a clear ValueError.
        torchscript: the package declares the model scriptable.
        compile_backend: ``torch.compile`` backend of the compile check: "aot_eager" (default) checks
            graph capture and AOT autograd without code generation, "inductor" also the generated code
            (a minute or more per large model on a small CPU); None skips it.
        unpooled_head: ``reset_classifier(0, "")`` leaves a spatial map (CNN-style heads).
        float64: compare TorchScript, compiled and frozen-BN outputs with eager in float64 (False for
            models whose kernels are float32-only: those comparisons then run in float32).
        only: run just these checks (names in ``checks.CHECKS``), the others skipped with ``only_reason``:
            for deeper variants that repeat a fully checked sibling's blocks, to keep CI within its time.
        only_reason: why the other checks are skipped (shown in pytest's summary).
        atol: absolute tolerance of numerical comparisons (float32).
        rtol: relative tolerance.
    """

    name: str
    img_size: int | tuple[int, int] = 64
    batch_size: int = 2
    reductions: tuple[int, ...] = (4, 8, 16, 32)
    output_strides: tuple[int, ...] = ()
    round_trip_kwargs: Mapping[str, Any] = field(default_factory=lambda: {"in_chans": 1})
    create_kwargs: Mapping[str, Any] = field(default_factory=dict)
    min_img_size: int = 32
    torchscript: bool = False
    compile_backend: str | None = "aot_eager"
    unpooled_head: bool = True
    float64: bool = True
    only: tuple[str, ...] | None = None
    only_reason: str = ""
    atol: float = 1e-4
    rtol: float = 1e-4

    @property
    def hw(self) -> tuple[int, int]:
        return (self.img_size, self.img_size) if isinstance(self.img_size, int) else tuple(self.img_size)  # type: ignore[return-value]

    def __str__(self) -> str:  # the pytest id
        return self.name
