"""Independent references written from the formulas, reading weights out of a state dict by key.

- :func:`context_block_ref`: mmcv's ``ContextBlock.forward`` (spatial_pool -> channel_mul / channel_add),
  spelled with explicit functional ops and mmcv's own reshapes (``x.view(b, 1, c, hw) @ mask.view(b, 1, hw,
  1)``), so our block's implementation is not reused.
- :func:`non_local_ref`: Eq. 1 with ``w_ij`` computed position pair by position pair in Python loops.
- :func:`snl_eq2_ref`: Eq. 2 (``W_v`` inside the sum, per position).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _conv1x1(x: Tensor, sd: dict[str, Tensor], key: str) -> Tensor:
    return F.conv2d(x, sd[f"{key}.weight"], sd.get(f"{key}.bias"))


def _bottleneck(ctx: Tensor, sd: dict[str, Tensor], prefix: str, transform: str) -> Tensor:
    if transform == "single":
        return _conv1x1(ctx, sd, f"{prefix}.0")
    h = _conv1x1(ctx, sd, f"{prefix}.0")
    if transform == "ln_relu":  # LayerNorm over [P, 1, 1], eps 1e-5, then ReLU (mmcv indices 0-1-2-3)
        mu = h.mean(dim=(1, 2, 3), keepdim=True)
        var = h.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        h = (h - mu) / torch.sqrt(var + 1e-5) * sd[f"{prefix}.1.weight"] + sd[f"{prefix}.1.bias"]
        return _conv1x1(torch.clamp(h, min=0), sd, f"{prefix}.3")
    if transform == "relu":
        return _conv1x1(torch.clamp(h, min=0), sd, f"{prefix}.2")
    return _conv1x1(h, sd, f"{prefix}.1")  # "linear": two convs back to back


def context_block_ref(
    x: Tensor, sd: dict[str, Tensor], pooling: str, fusion: tuple[str, ...], transform: str = "ln_relu"
) -> Tensor:
    b, c, h, w = x.shape
    if pooling == "att":
        input_x = x.view(b, c, h * w).unsqueeze(1)  # (b, 1, c, hw)
        mask = _conv1x1(x, sd, "conv_mask").view(b, 1, h * w)
        mask = torch.exp(mask - mask.max(dim=2, keepdim=True).values)
        mask = (mask / mask.sum(dim=2, keepdim=True)).unsqueeze(-1)  # (b, 1, hw, 1)
        context = torch.matmul(input_x, mask).view(b, c, 1, 1)
    else:
        context = x.sum(dim=(2, 3), keepdim=True) / (h * w)
    out = x
    if "channel_mul" in fusion:
        out = out * (1 / (1 + torch.exp(-_bottleneck(context, sd, "channel_mul_conv", transform))))
    if "channel_add" in fusion:
        out = out + _bottleneck(context, sd, "channel_add_conv", transform)
    return out


def _bn_eval(y: Tensor, sd: dict[str, Tensor], key: str) -> Tensor:
    shape = (1, -1, 1, 1)
    mean, var = sd[f"{key}.running_mean"].view(shape), sd[f"{key}.running_var"].view(shape)
    return (y - mean) / torch.sqrt(var + 1e-5) * sd[f"{key}.weight"].view(shape) + sd[f"{key}.bias"].view(
        shape
    )


def _vec(x: Tensor, sd: dict[str, Tensor] | None, key: str | None) -> Tensor:
    """(C, H, W) -> (N, C') per-position vectors, through a 1x1 conv given by key (None: raw)."""
    if key is None or sd is None:
        return x.flatten(1).t()
    return (sd[f"{key}.weight"].flatten(1) @ x.flatten(1) + sd[f"{key}.bias"][:, None]).t()


def non_local_weights_ref(x: Tensor, sd: dict[str, Tensor], mode: str) -> Tensor:
    """w_ij for one image x (C, H, W): (N, N), pair by pair from the paper's definitions."""
    n = x.shape[1] * x.shape[2]
    if mode == "gaussian":
        q = k = _vec(x, None, None)
    else:
        q, k = _vec(x, sd, "query"), _vec(x, sd, "key")
    w = torch.zeros(n, n, dtype=x.dtype)
    for i in range(n):
        for j in range(n):
            if mode == "concatenation":
                pair = torch.cat([q[i], k[j]])  # [W_q x_i, W_k x_j]
                w[i, j] = torch.clamp(sd["concat_project.weight"].flatten() @ pair, min=0) / n
            elif mode == "dot_product":
                w[i, j] = (q[i] @ k[j]) / n
            else:
                w[i, j] = torch.exp(q[i] @ k[j])
        if mode in ("gaussian", "embedded_gaussian"):
            w[i] = w[i] / w[i].sum()
    return w


def non_local_ref(x: Tensor, sd: dict[str, Tensor], mode: str) -> Tensor:
    """Eq. 1 with BN (eval) after W_z: (B, C, H, W) -> (B, C, H, W)."""
    outs = []
    for xb in x:
        _, h, w_ = xb.shape
        weights = non_local_weights_ref(xb, sd, mode)
        v = _vec(xb, sd, "value")  # (N, C_i)
        y = torch.stack([sum(weights[i, j] * v[j] for j in range(h * w_)) for i in range(h * w_)])
        y = y.t().reshape(-1, h, w_).unsqueeze(0)
        z = _bn_eval(F.conv2d(y, sd["proj.weight"]), sd, "norm")
        outs.append(xb.unsqueeze(0) + z)
    return torch.cat(outs)


def snl_eq2_ref(x: Tensor, sd: dict[str, Tensor]) -> Tensor:
    """Eq. 2: z_i = x_i + sum_j softmax_j(W_k x_j) (W_v x_j)."""
    outs = []
    for xb in x:
        logits = _vec(xb, sd, "conv_mask")[:, 0]  # (N,)
        a = torch.exp(logits - logits.max())
        a = a / a.sum()
        v = _vec(xb, sd, "channel_add_conv.0")  # (N, C)
        ctx = (a[:, None] * v).sum(0)
        outs.append(xb + ctx[:, None, None])
    return torch.stack(outs)
