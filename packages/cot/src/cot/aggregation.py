"""Local K x K aggregation of the value map with per-pixel weights, in pure PyTorch.

The dynamic context of a CoT block (Li et al., "Contextual Transformer Networks for Visual Recognition",
TPAMI, Eq. 3) multiplies each value channel's K x K neighbourhood by attention weights that differ per
pixel; a dilation d spreads the window's taps d pixels apart (dilated stages, ``output_stride`` 8 or
16). The official code runs this as a CuPy CUDA kernel; here it is shift-and-accumulate: the centre tap
starts the output and each of the other K*K - 1 offsets adds ``shifted value * weight`` into the window
it reaches, in place. Nothing of size K*K times the value tensor is ever materialised, and in eager mode
not even a padded copy of the value.

Channel sharing is strided: with ``M`` weight maps, value channel ``c`` uses map ``c % M`` (the CUDA
kernel's indexing). Viewing the value as ``(B, C // M, M, H, W)`` lines channel ``c = r * M + m`` up
with map ``m`` by broadcasting, so the shared weights are never repeated in memory.

In eager mode and under torch.compile the aggregation is a custom operator (``torch.library``) with a
hand-written backward that writes each tap's gradient straight into its window of one output buffer: left
to autograd, every slice and broadcast of the forward would allocate and zero-fill a full-size gradient
per tap. TorchScript and tracing (ONNX export) use a padded variant made only of whole-tensor ops,
which autograd also differentiates correctly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["local_aggregate"]


def _check(value: torch.Tensor, weight: torch.Tensor, kernel_size: int, dilation: int) -> None:
    if dilation < 1:
        raise ValueError("local_aggregate needs dilation >= 1, got " + str(dilation))
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


def _shift_accumulate(
    value: torch.Tensor, weight: torch.Tensor, kernel_size: int, dilation: int = 1
) -> torch.Tensor:
    B, C, H, W = value.shape
    M = weight.shape[1]
    pad = (kernel_size // 2) * dilation
    # (B, R, M, H', W'): channel c = r * M + m meets map m by broadcasting over R
    v = F.pad(value, [pad, pad, pad, pad]).view(B, C // M, M, H + 2 * pad, W + 2 * pad)
    w = weight.unsqueeze(1)
    out = v[:, :, :, 0:H, 0:W] * w[:, :, :, 0]
    for t in range(1, kernel_size * kernel_size):
        i = (t // kernel_size) * dilation
        j = (t % kernel_size) * dilation
        out.addcmul_(v[:, :, :, i : i + H, j : j + W], w[:, :, :, t])
    return out.view(B, C, H, W)


def _tap_regions(
    H: int, W: int, kernel_size: int, dilation: int = 1
) -> list[tuple[int, tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """For each off-centre tap t: the output window it reaches and the input window it reads.

    Windows are ``(h0, h1, w0, w1)``; taps whose window is empty (maps smaller than the offset) are left
    out, because everything they would read is zero padding.
    """
    pad = kernel_size // 2
    regions = []
    for t in range(kernel_size * kernel_size):
        di, dj = (t // kernel_size - pad) * dilation, (t % kernel_size - pad) * dilation
        if di == 0 and dj == 0:
            continue
        h0, h1 = max(0, -di), min(H, H - di)
        w0, w1 = max(0, -dj), min(W, W - dj)
        if h0 < h1 and w0 < w1:
            regions.append((t, (h0, h1, w0, w1), (h0 + di, h1 + di, w0 + dj, w1 + dj)))
    return regions


def _shift_accumulate_eager(
    value: torch.Tensor, weight: torch.Tensor, kernel_size: int, dilation: int = 1
) -> torch.Tensor:
    # as _shift_accumulate, without the padded copy of the value: the centre tap initialises the output
    # and every other tap adds into the window it reaches (in-place updates of slices, which tracing and
    # TorchScript export would not express, hence eager only)
    B, C, H, W = value.shape
    M = weight.shape[1]
    v = value.view(B, C // M, M, H, W)
    w = weight.unsqueeze(1)
    centre = (kernel_size * kernel_size) // 2
    out = v * w[:, :, :, centre]
    for t, (h0, h1, w0, w1), (a0, a1, b0, b1) in _tap_regions(H, W, kernel_size, dilation):
        out[..., h0:h1, w0:w1].addcmul_(v[..., a0:a1, b0:b1], w[:, :, :, t, h0:h1, w0:w1])
    return out.view(B, C, H, W)


#: Above this many elements in one of the R channel slices, d out / d w is accumulated slice by slice
#: (the tap's gradient stays in cache); below it one product and one sum per tap cost fewer calls.
ACCUMULATE_MIN_NUMEL = 1 << 16


def _aggregate_backward(
    g: torch.Tensor, value: torch.Tensor, weight: torch.Tensor, kernel_size: int, dilation: int
) -> tuple[torch.Tensor, torch.Tensor]:
    B, C, H, W = value.shape
    M = weight.shape[1]
    R = C // M
    K = kernel_size
    centre = (K * K) // 2
    regions = _tap_regions(H, W, K, dilation)
    g = g.contiguous().view(B, R, M, H, W)
    v = value.view(B, R, M, H, W)
    # d out / d v: each tap's contribution goes back to the window its shifted value came from
    w = weight.unsqueeze(1)
    gv = g * w[:, :, :, centre]
    for t, (h0, h1, w0, w1), (a0, a1, b0, b1) in regions:
        gv[..., a0:a1, b0:b1].addcmul_(g[..., h0:h1, w0:w1], w[:, :, :, t, h0:h1, w0:w1])
    # d out / d w: each map's weight collects from the R channels sharing it; outside a tap's window it
    # read zero padding, so its gradient there is zero
    gw = torch.zeros(B, M, K * K, H, W, dtype=g.dtype, device=g.device)
    accumulate = B * M * H * W >= ACCUMULATE_MIN_NUMEL
    for t, (h0, h1, w0, w1), (a0, a1, b0, b1) in [(centre, (0, H, 0, W), (0, H, 0, W)), *regions]:
        out = gw[:, :, t, h0:h1, w0:w1]
        gs, vs = g[..., h0:h1, w0:w1], v[..., a0:a1, b0:b1]
        if accumulate:
            torch.mul(gs[:, 0], vs[:, 0], out=out)
            for r in range(1, R):
                out.addcmul_(gs[:, r], vs[:, r])
        else:
            torch.sum(gs * vs, dim=1, out=out)
    return gv.view(B, C, H, W).to(value.dtype), gw.to(weight.dtype)


# The aggregation is a custom operator with the hand-written backward above, in eager mode and under
# torch.compile alike: left to autograd (or to the compiler), every slice and broadcast of the K*K
# in-place updates would get a full-size, zero-filled gradient of its own.
@torch.library.custom_op("ctxnets_cot::local_aggregate", mutates_args=())
def _aggregate_op(value: torch.Tensor, weight: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    return _shift_accumulate_eager(value.contiguous(), weight.contiguous(), kernel_size, dilation)


@_aggregate_op.register_fake
def _(value: torch.Tensor, *args: Any) -> torch.Tensor:
    return value.new_empty(value.shape)


@torch.library.custom_op("ctxnets_cot::local_aggregate_backward", mutates_args=())
def _aggregate_backward_op(
    grad_out: torch.Tensor, value: torch.Tensor, weight: torch.Tensor, kernel_size: int, dilation: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return _aggregate_backward(grad_out, value.contiguous(), weight.contiguous(), kernel_size, dilation)


@_aggregate_backward_op.register_fake
def _(
    grad_out: torch.Tensor, value: torch.Tensor, weight: torch.Tensor, *args: Any
) -> tuple[torch.Tensor, ...]:
    return value.new_empty(value.shape), weight.new_empty(weight.shape)


def _aggregate_op_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    value, weight, kernel_size, dilation = inputs
    ctx.save_for_backward(value, weight)
    ctx.kernel_size = kernel_size
    ctx.dilation = dilation


def _aggregate_op_backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    value, weight = ctx.saved_tensors
    grad_value, grad_weight = _aggregate_backward_op(grad_out, value, weight, ctx.kernel_size, ctx.dilation)
    return grad_value, grad_weight, None, None


_aggregate_op.register_autograd(_aggregate_op_backward, setup_context=_aggregate_op_setup)


def _aggregate(value: torch.Tensor, weight: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    if not torch.jit.is_scripting():  # noqa: SIM102  (TorchScript skips only this exact form)
        if not torch.jit.is_tracing():
            return _aggregate_op(value, weight, kernel_size, dilation)
    # TorchScript and tracing (ONNX export): padded, whole-tensor ops only
    return _shift_accumulate(value, weight, kernel_size, dilation)


def local_aggregate(
    value: torch.Tensor, weight: torch.Tensor, kernel_size: int = 3, dilation: int = 1, groups: int = 1
) -> torch.Tensor:
    """Per-pixel weighted K x K sum with zero padding and strided channel sharing (Eq. 3).

    ``out[b, c, h, w] = sum_{i,j} weight[b, c % M, i*K + j, h, w] * value[b, c, h + d(i - K//2),
    w + d(j - K//2)]`` for dilation d, within each of ``groups`` channel groups.

    Args:
        value: (B, C, H, W) value map V.
        weight: (B, M, K*K, H, W) attention weights, M dividing C; tap ``i * K + j`` is row i, column j.
        kernel_size: K, odd.
        dilation: d, the spacing of the window's taps (1: a dense K x K window).
        groups: channel groups aggregated independently, each with its share of the maps (CoXt: 2).

    Returns:
        (B, C, H, W) aggregated map, in the promoted dtype of ``value`` and ``weight`` (under autocast a
        float32 weight from the GroupNorm meets a half-precision value) and the memory format of ``value``.
    """
    _check(value, weight, kernel_size, dilation)
    if groups < 1 or weight.shape[1] % groups:
        raise ValueError(
            "local_aggregate needs groups >= 1 dividing the number of maps M = "
            + str(weight.shape[1])
            + ", got groups="
            + str(groups)
        )
    B, C, H, W = value.shape
    channels_last = value.is_contiguous(memory_format=torch.channels_last) and not value.is_contiguous()
    dtype = torch.promote_types(value.dtype, weight.dtype)
    # each group becomes a batch entry of its own (from channels-last, a contiguous copy)
    value = value.to(dtype).contiguous().view(B * groups, C // groups, H, W)
    weight = weight.to(dtype).contiguous().view(B * groups, -1, kernel_size * kernel_size, H, W)
    out = _aggregate(value, weight, kernel_size, dilation).view(B, C, H, W)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out
