"""CUDA's autocast dtype policy, emulated on CPU, so the contract kit sees what GPU users see.

Under ``torch.autocast("cuda")`` convolutions and matrix products run in float16/bfloat16, but a list of
ops (softmax, log_softmax, layer_norm, group_norm, the losses, ``sum``, ``exp``, ``pow``, ...) run in
float32 and *return* float32. A model then meets float32 tensors beside half-precision activations:
a custom autograd Function or an in-place op that assumes one dtype fails there, typically only in
backward ("expected scalar type BFloat16 but found Float"). CPU autocast casts the same matrix ops down
but keeps those ops in the input's dtype, so a CPU test cannot see the failure.

:func:`cuda_like_autocast` is CPU autocast plus a :class:`~torch.overrides.TorchFunctionMode` that gives
the float32-list ops CUDA's treatment: half-precision floating inputs are cast to float32 first, so the
op runs and returns in float32 and autograd records the casts, exactly as CUDA's autocast does. The list
is the one PyTorch documents for CUDA ("CUDA Ops that can autocast to float32", torch.amp docs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["CUDA_FLOAT32_OPS", "CudaFloat32Policy", "cuda_like_autocast"]

#: Functions and Tensor methods CUDA's autocast runs (and returns) in float32, by ``__name__``.
CUDA_FLOAT32_OPS: frozenset[str] = frozenset(
    {
        "__pow__", "__rdiv__", "__rpow__", "__rtruediv__", "acos", "asin", "binary_cross_entropy_with_logits",
        "cosh", "cosine_embedding_loss", "cdist", "cosine_similarity", "cross_entropy", "cumprod", "cumsum",
        "dist", "erfinv", "exp", "expm1", "group_norm", "hinge_embedding_loss", "kl_div", "l1_loss",
        "layer_norm", "log", "log_softmax", "log10", "log1p", "log2", "logsumexp", "margin_ranking_loss",
        "mse_loss", "multilabel_margin_loss", "multi_margin_loss", "nll_loss", "norm", "normalize", "pdist",
        "poisson_nll_loss", "pow", "prod", "reciprocal", "rsqrt", "sinh", "smooth_l1_loss",
        "soft_margin_loss", "softmax", "softmin", "softplus", "sum", "renorm", "tan", "triplet_margin_loss",
        "huber_loss",
    }
)  # fmt: skip

_HALF = (torch.float16, torch.bfloat16)


def _to_float32(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in _HALF else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(v) for v in value)
    return value


class CudaFloat32Policy(TorchFunctionMode):
    """While CPU autocast is on, run :data:`CUDA_FLOAT32_OPS` on float32 inputs (so they return float32).

    Ops called with an explicit ``dtype=`` keep it, as on CUDA. Outside an enabled CPU autocast region
    (``torch.autocast(..., enabled=False)`` inside a model) nothing changes.
    """

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        if name in CUDA_FLOAT32_OPS and kwargs.get("dtype") is None and torch.is_autocast_enabled("cpu"):
            args, kwargs = _to_float32(tuple(args)), {k: _to_float32(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


@contextlib.contextmanager
def cuda_like_autocast(dtype: torch.dtype = torch.bfloat16, device: str = "cpu") -> Iterator[None]:
    """Autocast with CUDA's dtype policy: ``torch.autocast("cuda")`` itself on a CUDA device, on CPU
    CPU autocast plus :class:`CudaFloat32Policy`.

    Use it as a GPU user uses autocast: the forward and the loss inside, ``backward()`` after the block.

    Args:
        dtype: torch.bfloat16 or torch.float16.
        device: "cpu" (emulated) or "cuda" (the real policy).
    """
    if dtype not in _HALF:
        raise ValueError(f"cuda_like_autocast needs torch.bfloat16 or torch.float16, got {dtype}")
    if device.startswith("cuda"):
        with torch.autocast("cuda", dtype=dtype):
            yield
        return
    with torch.autocast("cpu", dtype=dtype), CudaFloat32Policy():
        yield
