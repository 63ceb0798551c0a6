"""Local K x K aggregation of the value map with per-pixel weights, in pure PyTorch.

The dynamic context of a CoT block (Li et al., "Contextual Transformer Networks for Visual Recognition",
TPAMI, Eq. 3) multiplies each value channel's K x K neighbourhood by attention weights that differ per
pixel. The official code runs this as a CuPy CUDA kernel; here it is shift-and-accumulate: the centre tap
starts the output and each of the other K*K - 1 offsets adds ``shifted value * weight`` into the window
it reaches, in place. Nothing of size K*K times the value tensor is ever materialised, and in eager mode
not even a padded copy of the value.

Channel sharing is strided: with ``M`` weight maps, value channel ``c`` uses map ``c % M`` (the CUDA
kernel's indexing). Viewing the value as ``(B, C // M, M, H, W)`` lines channel ``c = r * M + m`` up
with map ``m`` by broadcasting, so the shared weights are never repeated in memory.

Training goes through a custom autograd function whose backward writes each tap's gradient straight into
its window of one output buffer: left to autograd, every slice and broadcast of the forward would allocate
and zero-fill a full-size gradient per tap. TorchScript, tracing (ONNX export) and torch.compile use a
padded variant made only of whole-tensor ops, which autograd also differentiates correctly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["local_aggregate", "normed_local_aggregate"]


def _check(value: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> None:
    if (
        value.dim() != 4
        or weight.dim() != 5
        or weight.shape[0] != value.shape[0]
        or weight.shape[2] != kernel_size * kernel_size
        or weight.shape[3] != value.shape[2]
        or weight.shape[4] != value.shape[3]
        or value.shape[1] % weight.shape[1] != 0
    ):
        raise ValueError(
            "local_aggregate needs value (B, C, H, W) and weight (B, M, K*K, H, W) with M dividing C and "
            + "K = "
            + str(kernel_size)
            + "; got value "
            + str(list(value.shape))
            + " and weight "
            + str(list(weight.shape))
        )


def _shift_accumulate(value: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    B, C, H, W = value.shape
    M = weight.shape[1]
    pad = kernel_size // 2
    # (B, R, M, H', W'): channel c = r * M + m meets map m by broadcasting over R
    v = F.pad(value, [pad, pad, pad, pad]).view(B, C // M, M, H + 2 * pad, W + 2 * pad)
    w = weight.unsqueeze(1)
    out = v[:, :, :, 0:H, 0:W] * w[:, :, :, 0]
    for t in range(1, kernel_size * kernel_size):
        i = t // kernel_size
        j = t % kernel_size
        out.addcmul_(v[:, :, :, i : i + H, j : j + W], w[:, :, :, t])
    return out.view(B, C, H, W)


def _tap_regions(
    H: int, W: int, kernel_size: int
) -> list[tuple[int, tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """For each off-centre tap t: the output window it reaches and the input window it reads.

    Windows are ``(h0, h1, w0, w1)``; taps whose window is empty (maps smaller than the offset) are left
    out, because everything they would read is zero padding.
    """
    pad = kernel_size // 2
    regions = []
    for t in range(kernel_size * kernel_size):
        di, dj = t // kernel_size - pad, t % kernel_size - pad
        if di == 0 and dj == 0:
            continue
        h0, h1 = max(0, -di), min(H, H - di)
        w0, w1 = max(0, -dj), min(W, W - dj)
        if h0 < h1 and w0 < w1:
            regions.append((t, (h0, h1, w0, w1), (h0 + di, h1 + di, w0 + dj, w1 + dj)))
    return regions


def _shift_accumulate_eager(value: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    # as _shift_accumulate, without the padded copy of the value: the centre tap initialises the output
    # and every other tap adds into the window it reaches (in-place updates of slices, which tracing and
    # TorchScript export would not express, hence eager only)
    B, C, H, W = value.shape
    M = weight.shape[1]
    v = value.view(B, C // M, M, H, W)
    w = weight.unsqueeze(1)
    centre = (kernel_size * kernel_size) // 2
    out = v * w[:, :, :, centre]
    for t, (h0, h1, w0, w1), (a0, a1, b0, b1) in _tap_regions(H, W, kernel_size):
        out[..., h0:h1, w0:w1].addcmul_(v[..., a0:a1, b0:b1], w[:, :, :, t, h0:h1, w0:w1])
    return out.view(B, C, H, W)


class _LocalAggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, value: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
        ctx.save_for_backward(value, weight)
        ctx.kernel_size = kernel_size
        return _shift_accumulate_eager(value, weight, kernel_size)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        value, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad_value, grad_weight = _aggregate_backward(
            grad_out, value, weight, ctx.kernel_size, need[0], need[1]
        )
        return grad_value, grad_weight, None


#: Above this many elements in one of the R channel slices, d out / d w is accumulated slice by slice
#: (the tap's gradient stays in cache); below it one product and one sum per tap cost fewer calls.
ACCUMULATE_MIN_NUMEL = 1 << 16


def _aggregate_backward(
    g: torch.Tensor,
    value: torch.Tensor,
    weight: torch.Tensor,
    kernel_size: int,
    need_value: bool,
    need_weight: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    B, C, H, W = value.shape
    M = weight.shape[1]
    R = C // M
    K = kernel_size
    centre = (K * K) // 2
    regions = _tap_regions(H, W, K)
    g = g.contiguous().view(B, R, M, H, W)
    v = value.view(B, R, M, H, W)
    grad_value = grad_weight = None
    if need_value:
        # d out / d v: each tap's contribution goes back to the window its shifted value came from
        w = weight.unsqueeze(1)
        gv = g * w[:, :, :, centre]
        for t, (h0, h1, w0, w1), (a0, a1, b0, b1) in regions:
            gv[..., a0:a1, b0:b1].addcmul_(g[..., h0:h1, w0:w1], w[:, :, :, t, h0:h1, w0:w1])
        grad_value = gv.view(B, C, H, W).to(value.dtype)
    if need_weight:
        # d out / d w: each map's weight collects from the R channels sharing it; outside a tap's
        # window it read zero padding, so its gradient there is zero
        gw = torch.empty(B, M, K * K, H, W, dtype=g.dtype, device=g.device)
        taps = [(centre, (0, H, 0, W), (0, H, 0, W)), *regions]
        for t in set(range(K * K)) - {tap[0] for tap in taps}:
            gw[:, :, t].zero_()
        accumulate = B * M * H * W >= ACCUMULATE_MIN_NUMEL
        for t, (h0, h1, w0, w1), (a0, a1, b0, b1) in taps:
            plane = gw[:, :, t]
            plane[..., :h0, :].zero_()
            plane[..., h1:, :].zero_()
            plane[..., h0:h1, :w0].zero_()
            plane[..., h0:h1, w1:].zero_()
            out = plane[..., h0:h1, w0:w1]
            gs, vs = g[..., h0:h1, w0:w1], v[..., a0:a1, b0:b1]
            if accumulate:
                torch.mul(gs[:, 0], vs[:, 0], out=out)
                for r in range(1, R):
                    out.addcmul_(gs[:, r], vs[:, r])
            else:
                torch.sum(gs * vs, dim=1, out=out)
        grad_weight = gw.to(weight.dtype)
    return grad_value, grad_weight


# Under torch.compile the aggregation is an opaque operator with the hand-written backward above: the
# compiler would otherwise differentiate the K*K in-place updates itself, which costs more than these
# kernels on CPU (and it keeps value and weight for backward, as the eager autograd function does).
@torch.library.custom_op("ctxnets_cot::local_aggregate", mutates_args=())
def _aggregate_op(value: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    return _shift_accumulate_eager(value.contiguous(), weight.contiguous(), kernel_size)


@_aggregate_op.register_fake
def _(value: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    return value.new_empty(value.shape)


@torch.library.custom_op("ctxnets_cot::local_aggregate_backward", mutates_args=())
def _aggregate_backward_op(
    grad_out: torch.Tensor, value: torch.Tensor, weight: torch.Tensor, kernel_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    grad_value, grad_weight = _aggregate_backward(
        grad_out, value.contiguous(), weight.contiguous(), kernel_size, True, True
    )
    assert grad_value is not None and grad_weight is not None
    return grad_value, grad_weight


@_aggregate_backward_op.register_fake
def _(
    grad_out: torch.Tensor, value: torch.Tensor, weight: torch.Tensor, kernel_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return value.new_empty(value.shape), weight.new_empty(weight.shape)


def _aggregate_op_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    value, weight, kernel_size = inputs
    ctx.save_for_backward(value, weight)
    ctx.kernel_size = kernel_size


def _aggregate_op_backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
    value, weight = ctx.saved_tensors
    grad_value, grad_weight = _aggregate_backward_op(grad_out, value, weight, ctx.kernel_size)
    return grad_value, grad_weight, None


_aggregate_op.register_autograd(_aggregate_op_backward, setup_context=_aggregate_op_setup)


def _group_norm_fp32(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float, dtype: torch.dtype
) -> torch.Tensor:
    # float32 statistics (as autocast would do), whatever the input dtype; result in the aggregation's dtype
    dt = torch.promote_types(x.dtype, torch.float32)
    return F.group_norm(x.to(dt), num_groups, weight.to(dt), bias.to(dt), eps).to(dtype)


class _NormedLocalAggregate(torch.autograd.Function):
    """GroupNorm of the attention logits fused with the aggregation: only the logits are kept for
    backward and the normalised weights are recomputed there (a cheap element-wise op), which saves one
    weight-sized activation per layer."""

    @staticmethod
    def forward(
        ctx: Any,
        value: torch.Tensor,
        logits: torch.Tensor,
        gn_weight: torch.Tensor,
        gn_bias: torch.Tensor,
        num_maps: int,
        eps: float,
        kernel_size: int,
        groups: int,
    ) -> torch.Tensor:
        ctx.save_for_backward(value, logits, gn_weight, gn_bias)
        ctx.args = (num_maps, eps, kernel_size, groups)
        w = _group_norm_fp32(logits, num_maps, gn_weight, gn_bias, eps, value.dtype)
        B, _, H, W = logits.shape
        return _shift_accumulate_eager(value, w.view(B * groups, num_maps // groups, -1, H, W), kernel_size)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        value, logits, gn_weight, gn_bias = ctx.saved_tensors
        num_maps, eps, kernel_size, groups = ctx.args
        B, _, H, W = logits.shape
        with torch.enable_grad():
            inputs = [
                t.detach().requires_grad_(need)
                for t, need in zip((logits, gn_weight, gn_bias), ctx.needs_input_grad[1:4])
            ]
            w = _group_norm_fp32(inputs[0], num_maps, inputs[1], inputs[2], eps, value.dtype)
        grad_value, grad_w = _aggregate_backward(
            grad_out,
            value,
            w.detach().view(B * groups, num_maps // groups, -1, H, W),
            kernel_size,
            ctx.needs_input_grad[0],
            any(ctx.needs_input_grad[1:4]),
        )
        grads: list[torch.Tensor | None] = [None, None, None]
        if grad_w is not None:
            wanted = [t for t in inputs if t.requires_grad]
            got = iter(torch.autograd.grad(w, wanted, grad_w.view(w.shape)))
            grads = [next(got) if t.requires_grad else None for t in inputs]
        return grad_value, grads[0], grads[1], grads[2], None, None, None, None


@torch.library.custom_op("ctxnets_cot::normed_local_aggregate", mutates_args=())
def _normed_aggregate_op(
    value: torch.Tensor,
    logits: torch.Tensor,
    gn_weight: torch.Tensor,
    gn_bias: torch.Tensor,
    num_maps: int,
    eps: float,
    kernel_size: int,
    groups: int,
) -> torch.Tensor:
    B, _, H, W = logits.shape
    w = _group_norm_fp32(logits, num_maps, gn_weight, gn_bias, eps, value.dtype)
    w = w.view(B * groups, num_maps // groups, -1, H, W)
    return _shift_accumulate_eager(value.contiguous(), w, kernel_size)


@_normed_aggregate_op.register_fake
def _(
    value: torch.Tensor,
    logits: torch.Tensor,
    gn_weight: torch.Tensor,
    gn_bias: torch.Tensor,
    num_maps: int,
    eps: float,
    kernel_size: int,
    groups: int,
) -> torch.Tensor:
    return value.new_empty(value.shape)


@torch.library.custom_op("ctxnets_cot::normed_local_aggregate_backward", mutates_args=())
def _normed_aggregate_backward_op(
    grad_out: torch.Tensor,
    value: torch.Tensor,
    logits: torch.Tensor,
    gn_weight: torch.Tensor,
    gn_bias: torch.Tensor,
    num_maps: int,
    eps: float,
    kernel_size: int,
    groups: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # the GroupNorm is recomputed (float32 statistics) and differentiated with ATen's own backward
    dt = torch.promote_types(logits.dtype, torch.float32)
    x = logits.to(dt)
    N, C, H, W = x.shape
    gw = gn_weight.to(dt)
    w, mean, rstd = torch.native_group_norm(x, gw, gn_bias.to(dt), N, C, H * W, num_maps, eps)
    w = w.to(value.dtype).view(N * groups, num_maps // groups, -1, H, W)
    grad_value, grad_w = _aggregate_backward(grad_out, value.contiguous(), w, kernel_size, True, True)
    assert grad_value is not None and grad_w is not None
    grad_x, grad_gw, grad_gb = torch.ops.aten.native_group_norm_backward(
        grad_w.reshape(N, C, H, W).to(dt), x, mean, rstd, gw, N, C, H * W, num_maps, [True, True, True]
    )
    return grad_value, grad_x.to(logits.dtype), grad_gw.to(gn_weight.dtype), grad_gb.to(gn_bias.dtype)


@_normed_aggregate_backward_op.register_fake
def _(
    grad_out: torch.Tensor,
    value: torch.Tensor,
    logits: torch.Tensor,
    gn_weight: torch.Tensor,
    gn_bias: torch.Tensor,
    num_maps: int,
    eps: float,
    kernel_size: int,
    groups: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        value.new_empty(value.shape),
        logits.new_empty(logits.shape),
        gn_weight.new_empty(gn_weight.shape),
        gn_bias.new_empty(gn_bias.shape),
    )


def _normed_aggregate_op_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    value, logits, gn_weight, gn_bias, *args = inputs
    ctx.save_for_backward(value, logits, gn_weight, gn_bias)
    ctx.args = args


def _normed_aggregate_op_backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    grads = _normed_aggregate_backward_op(grad_out, *ctx.saved_tensors, *ctx.args)
    return (*grads, None, None, None, None)


_normed_aggregate_op.register_autograd(
    _normed_aggregate_op_backward, setup_context=_normed_aggregate_op_setup
)


def normed_local_aggregate(
    value: torch.Tensor,
    logits: torch.Tensor,
    gn_weight: torch.Tensor,
    gn_bias: torch.Tensor,
    num_maps: int,
    eps: float = 1e-5,
    kernel_size: int = 3,
    groups: int = 1,
) -> torch.Tensor:
    """GroupNorm the attention logits, then :func:`local_aggregate` each of ``groups`` channel groups.

    Equal to ``local_aggregate(value.view(B*g, C/g, H, W), GroupNorm(M)(logits).view(B*g, M/g, K*K, H, W))``
    (the CoT / CoXt layer's steps 2-4) with the normalisation in float32, but keeps only ``logits`` for
    backward.

    Args:
        value: (B * groups, C / groups, H, W) value map.
        logits: (B, M * K*K, H, W) attention logits; channels ``j*K*K .. (j+1)*K*K - 1`` are map j.
        gn_weight: (M * K*K,) GroupNorm scale.
        gn_bias: (M * K*K,) GroupNorm shift.
        num_maps: M, the number of attention maps (GroupNorm groups).
        eps: GroupNorm epsilon.
        kernel_size: K.
        groups: channel groups aggregated independently (CoXt: 2).

    Returns:
        (B * groups, C / groups, H, W).
    """
    B, _, H, W = logits.shape
    if not torch.jit.is_scripting():  # TorchScript skips only this exact form
        if (
            not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()
            and torch.is_grad_enabled()
            and (value.requires_grad or logits.requires_grad or gn_weight.requires_grad)
        ):
            _check(value, logits.view(B * groups, num_maps // groups, -1, H, W), kernel_size)
            dtype = torch.promote_types(value.dtype, logits.dtype)
            return _NormedLocalAggregate.apply(
                value.to(dtype), logits, gn_weight, gn_bias, num_maps, eps, kernel_size, groups
            )
        if torch.compiler.is_compiling():
            dtype = torch.promote_types(value.dtype, logits.dtype)
            return _normed_aggregate_op(
                value.to(dtype), logits, gn_weight, gn_bias, num_maps, eps, kernel_size, groups
            )
    # local_aggregate picks the eager or the traceable kernel
    dtype = torch.promote_types(value.dtype, logits.dtype)
    w = _group_norm_fp32(logits, num_maps, gn_weight, gn_bias, eps, dtype)
    return local_aggregate(value, w.view(B * groups, num_maps // groups, -1, H, W), kernel_size)


def local_aggregate(value: torch.Tensor, weight: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
    """Per-pixel weighted K x K sum with zero padding and strided channel sharing (Eq. 3).

    ``out[b, c, h, w] = sum_{i,j} weight[b, c % M, i*K + j, h, w] * value[b, c, h + i - K//2, w + j - K//2]``

    Args:
        value: (B, C, H, W) value map V.
        weight: (B, M, K*K, H, W) attention weights, M dividing C; tap ``i * K + j`` is row i, column j.
        kernel_size: K, odd.

    Returns:
        (B, C, H, W) aggregated map, in the promoted dtype of ``value`` and ``weight``.
    """
    _check(value, weight, kernel_size)
    dtype = torch.promote_types(value.dtype, weight.dtype)
    value = value.to(dtype)
    weight = weight.to(dtype)
    if not torch.jit.is_scripting():  # TorchScript skips only this exact form
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            if torch.is_grad_enabled() and (value.requires_grad or weight.requires_grad):
                return _LocalAggregate.apply(value, weight, kernel_size)
            return _shift_accumulate_eager(value, weight, kernel_size)
        if torch.compiler.is_compiling():
            return _aggregate_op(value, weight, kernel_size)
    # TorchScript and tracing (ONNX export): padded, whole-tensor ops only
    return _shift_accumulate(value, weight, kernel_size)
