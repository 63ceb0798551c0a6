"""``pretrained_cfg``s that carry the paper's numbers beside timm's preprocessing fields.

timm's ``PretrainedCfg`` has no place for a paper's parameter count, GFLOPs or top-1, which ``ctxnets zoo``
compares against. :class:`PaperCfg` is a dataclass subclass of it, so ``generate_default_cfgs`` and
``build_model_with_cfg`` pass it through unchanged and ``model.pretrained_cfg`` holds the extra keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import PretrainedCfg

__all__ = ["PAPER_FIELDS", "PaperCfg", "paper_cfg", "paper_numbers"]


@dataclass
class PaperCfg(PretrainedCfg):
    """timm's PretrainedCfg plus the paper's reported numbers and the tolerances ``ctxnets zoo`` checks.

    Attributes:
        paper_params: parameter count (exact, from the official code where the spec says so).
        paper_gflops: multiply-accumulates in G at ``paper_img_size`` (the papers' "GFLOPs").
        paper_top1: ImageNet-1k top-1 (%) reported by the paper, None for methods without one.
        paper_img_size: resolution of ``paper_gflops``.
        params_rtol: relative tolerance on the parameter count (0.0: exact).
        gflops_rtol: relative tolerance on GFLOPs.
        weights_page: where the official checkpoint is published when it has no direct download link
            (a Google Drive page, say); a tag with one counts as having weights, and ``pretrained=True``
            without ``pretrained_cfg_overlay=dict(file=...)`` says where to get the file.
    """

    paper_params: int | None = None
    paper_gflops: float | None = None
    paper_top1: float | None = None
    paper_img_size: int | None = None
    params_rtol: float = 0.0
    gflops_rtol: float = 0.05
    weights_page: str | None = None

    @property
    def has_weights(self) -> bool:  # type: ignore[override]
        """timm's test (url, file or hub id), or an official page the file can be fetched from by hand.

        timm lists a tag in ``list_models(pretrained=True)`` only when this is true.
        """
        return bool(super().has_weights or self.weights_page)


PAPER_FIELDS: tuple[str, ...] = tuple(
    f.name
    for f in dataclasses.fields(PaperCfg)
    if f.name not in {g.name for g in dataclasses.fields(PretrainedCfg)} and f.name != "weights_page"
)


def paper_cfg(
    url: str = "",
    *,
    paper_params: int,
    paper_gflops: float,
    paper_top1: float | None,
    paper_name: str,
    paper_ids: str,
    origin_url: str,
    paper_img_size: int = 224,
    params_rtol: float = 0.0,
    gflops_rtol: float = 0.05,
    **kwargs: Any,
) -> PaperCfg:
    """Build a :class:`PaperCfg` with ImageNet defaults (224, bicubic, crop 0.875) unless overridden.

    Args:
        url: direct download link of the official weights (empty: none; see ``weights_page``).
        paper_params: exact parameter count the model must have.
        paper_gflops: paper GMACs at ``paper_img_size``.
        paper_top1: paper top-1 accuracy.
        paper_name: paper title.
        paper_ids: arXiv / DOI identifier(s).
        origin_url: official code repository.
        paper_img_size: resolution of ``paper_gflops``.
        params_rtol: tolerance on ``paper_params`` (0: exact).
        gflops_rtol: tolerance on ``paper_gflops``.
        **kwargs: any other PretrainedCfg field (``input_size``, ``pool_size``, ``first_conv``, ...).
    """
    cfg: dict[str, Any] = {
        "url": url or None,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "license": "apache-2.0",
    }
    cfg.update(kwargs)
    return PaperCfg(
        paper_params=paper_params,
        paper_gflops=paper_gflops,
        paper_top1=paper_top1,
        paper_img_size=paper_img_size,
        params_rtol=params_rtol,
        gflops_rtol=gflops_rtol,
        paper_name=paper_name,
        paper_ids=paper_ids,
        origin_url=origin_url,
        **cfg,
    )


def paper_numbers(pretrained_cfg: Any) -> dict[str, Any]:
    """The paper fields of a model's ``pretrained_cfg`` (dict or dataclass); missing ones are None."""
    if dataclasses.is_dataclass(pretrained_cfg) and not isinstance(pretrained_cfg, type):
        pretrained_cfg = dataclasses.asdict(pretrained_cfg)
    pretrained_cfg = pretrained_cfg or {}
    return {k: pretrained_cfg.get(k) for k in PAPER_FIELDS}
