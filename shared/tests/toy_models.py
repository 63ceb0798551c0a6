"""A tiny CNN that keeps the whole model contract, and copies of it that each break one part.

``ctxnets_toy`` passes every check of ``ctxnets_shared.testing``; ``ctxnets_toy_<defect>`` is the same
network with one deliberate defect (see :data:`DEFECTS`), so each check is shown to fail on a model that
breaks it. Registered with timm on import, as a package's models are.
"""

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model

from ctxnets_shared.models import build_model_with_args, check_image_input, feature_take_indices, paper_cfg

#: defect -> the contract check that must catch it
DEFECTS: dict[str, str] = {
    "unused_param": "forward_backward",
    "no_head_hidden_size": "timm_attributes",
    "bad_cfg": "pretrained_cfg",
    "reset_ignored": "reset_classifier",
    "wrong_reductions": "features_only",
    "short_intermediates": "forward_intermediates",
    "checkpoint_skips": "grad_checkpointing",
    "fx_control_flow": "fx_trace",
    "fx_features_differ": "fx_feature_extraction",
    "not_scriptable": "torchscript",
    "compile_differs": "compile",
    "bf16_nan": "autocast",
    "autocast_dtype_mix": "autocast",
    "channels_last_view": "channels_last",
    "bn_momentum": "frozen_bn_training",
    "bn_model_mode": "eval_bn_training",
    "sync_bn_refused": "sync_bn_training",
    "output_stride_ignored": "output_stride",
    "kwargs_forgotten": "round_trip",
    "no_input_check": "bad_input",
}


class _ScaleByAttention(torch.autograd.Function):
    """``x * a`` with a backward that assumes ``x`` and ``a`` share a dtype: true under CPU autocast, false
    under CUDA's, where ``a`` (a softmax) is float32 beside bfloat16 ``x`` (the GC block's old bug)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, a)
        return x * a

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, a = ctx.saved_tensors
        b = x.shape[0]
        grad_a = torch.bmm(g.reshape(b, 1, -1), x.reshape(b, -1, 1))  # needs g and x of one dtype
        return g * a, grad_a.reshape(a.shape)


class ToyStage(nn.Module):
    """conv-BN-ReLU-conv-BN (last BN zero-initialised) plus a 1x1 shortcut, then ReLU."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        nn.init.zeros_(self.bn2.weight)
        self.shortcut = nn.Conv2d(in_chs, out_chs, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + self.shortcut(x))


class ToyNet(nn.Module):
    """Stem (stride 4) and four stages at reductions 4, 8, 16, 32; ``defect`` breaks one contract part."""

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        width: int = 8,
        output_stride: int = 32,
        defect: str = "",
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.defect = defect
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.stem = nn.Conv2d(in_chans, width, 4, stride=4, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        if defect == "output_stride_ignored":
            output_stride = 32
        stages, self.feature_info, chs, red, dil = [], [], width, 4, 1
        for i in range(4):
            stride = 1 if i == 0 else 2
            if red * stride > output_stride:
                dil, stride = dil * stride, 1
            red *= stride
            stages.append(ToyStage(chs, width * 2**i, stride, dil))
            chs = width * 2**i
            declared = 16 if (defect == "wrong_reductions" and i == 3) else red
            self.feature_info.append(dict(num_chs=chs, reduction=declared, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = chs
        if defect != "no_head_hidden_size":
            self.head_hidden_size = chs
        self.global_pool, self.fc = create_classifier(chs, num_classes, pool_type=global_pool)
        if defect == "unused_param":
            self.unused = nn.Linear(2, 2)
        self.fn: Any = (lambda t: t) if defect == "not_scriptable" else None

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if self.defect == "reset_ignored":
            return
        self.num_classes = num_classes
        pool = global_pool if global_pool is not None else self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=pool)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        if self.defect != "no_input_check":
            check_image_input(x, self.in_chans, 32)
        x = self.stem(x)
        if self.defect in ("bn_momentum", "bn_model_mode", "sync_bn_refused"):
            return self._defective_bn(x)
        return self.stem_bn(x)

    @torch.jit.unused
    def _defective_bn(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.stem_bn
        if self.defect == "bn_momentum":  # reads a buffer FrozenBatchNorm2d does not have
            return bn(x) + 0 * bn.num_batches_tracked
        if self.defect == "bn_model_mode":  # the model's mode, not the BN's, picks batch statistics
            return F.batch_norm(
                x, bn.running_mean, bn.running_var, bn.weight, bn.bias, self.training, 0.1, bn.eps
            )
        if isinstance(bn, nn.SyncBatchNorm):
            raise TypeError("this network only takes nn.BatchNorm2d")
        return bn(x)

    @torch.jit.unused
    def _defective_tail(self, x: torch.Tensor) -> torch.Tensor:
        if self.defect == "channels_last_view":  # a view that only an NCHW-contiguous batch allows
            return x.view(x.shape[0], -1).view(x.shape)
        return _ScaleByAttention.apply(x, x.mean((1, 2, 3), keepdim=True).softmax(dim=0))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        take, max_index = feature_take_indices(4, indices)
        if self.defect == "short_intermediates":
            take = take[1:] or take
        intermediates = []
        x = self._stem(x)
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                intermediates.append(x * 2 if self.defect == "fx_features_differ" else x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] | tuple[int, ...] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        take, max_index = feature_take_indices(4, indices)
        self.stages = self.stages[: max_index + 1]
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem(x)
        if self.defect == "fx_control_flow" and x.mean() > 1e9:
            x = x * 0
        if self.grad_checkpointing and not torch.jit.is_scripting():
            if self.defect == "checkpoint_skips":
                x = self.stages[-1].shortcut(checkpoint_seq(self.stages[:-1], x))
            else:
                x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        if self.fn is not None:
            x = self.fn(x)
        if self.defect in ("channels_last_view", "autocast_dtype_mix"):
            x = self._defective_tail(x)
        if not torch.jit.is_scripting():
            if self.defect == "compile_differs" and torch.compiler.is_compiling():
                x = x + 1
            if self.defect == "bf16_nan" and torch.is_autocast_enabled("cpu"):
                x = x * float("nan")
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(classifier: str = "fc") -> Any:
    return paper_cfg(
        paper_params=0, paper_gflops=0.0, paper_top1=None, paper_name="toy", paper_ids="none",
        origin_url="https://example.invalid/toy", first_conv="stem", classifier=classifier, pool_size=(7, 7),
    )  # fmt: skip


default_cfgs = generate_default_cfgs(
    {
        "ctxnets_toy": _cfg(),
        **{f"ctxnets_toy_{d}": _cfg("head" if d == "bad_cfg" else "fc") for d in DEFECTS},
    }
)


def _make(name: str, defect: str) -> Any:
    def entry(pretrained: bool = False, **kwargs: Any) -> ToyNet:
        build = build_model_with_cfg if defect == "kwargs_forgotten" else build_model_with_args
        return build(
            ToyNet,
            name,
            pretrained,
            feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
            **{"defect": defect, **kwargs},
        )

    entry.__name__ = name
    entry.__module__ = __name__
    return register_model(entry)


ctxnets_toy = _make("ctxnets_toy", "")
for _defect in DEFECTS:
    globals()[f"ctxnets_toy_{_defect}"] = _make(f"ctxnets_toy_{_defect}", _defect)
