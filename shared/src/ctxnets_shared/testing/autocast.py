"""CUDA's autocast dtype policy, emulated on CPU, so the contract kit sees what GPU users see.

Under ``torch.autocast("cuda")`` convolutions and matrix products run in float16/bfloat16, but a list of
ops (softmax, log_softmax, layer_norm, group_norm, the losses, ``sum``, ``exp``, ``pow``, ...) run in
float32 and *return* float32. A model then meets float32 tensors beside half-precision activations:
a custom autograd Function or an in-place op that assumes one dtype fails there, typically only in
backward ("expected scalar type BFloat16 but found Float"). CPU autocast casts the same matrix ops down
but keeps those ops in the input's dtype, so a CPU test cannot see the failure.

:func:`cuda_autocast_policy` overrides those functions (in ``torch``, ``torch.nn.functional`` and as
``Tensor`` methods, the list PyTorch documents as "CUDA Ops that can autocast to float32") so that, while
CPU autocast is on, their half-precision inputs are cast to float32 first: the op runs and returns in
float32 and autograd records the casts, as under CUDA's autocast. The overrides follow CPU autocast's
state, so they also apply where ``torch.utils.checkpoint`` re-enters autocast to recompute a forward
during backward. :func:`cuda_like_autocast` is CPU autocast with the policy on.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["CUDA_FLOAT32_OPS", "cuda_autocast_policy", "cuda_like_autocast"]

#: Functions and Tensor methods CUDA's autocast runs (and returns) in float32.
CUDA_FLOAT32_OPS: frozenset[str] = frozenset(
    {
        "__pow__", "__rpow__", "__rtruediv__", "acos", "asin", "binary_cross_entropy_with_logits", "cosh",
        "cosine_embedding_loss", "cdist", "cosine_similarity", "cross_entropy", "cumprod", "cumsum", "dist",
        "erfinv", "exp", "expm1", "group_norm", "hinge_embedding_loss", "huber_loss", "kl_div", "l1_loss",
        "layer_norm", "log", "log_softmax", "log10", "log1p", "log2", "logsumexp", "margin_ranking_loss",
        "mse_loss", "multilabel_margin_loss", "multi_margin_loss", "nll_loss", "norm", "normalize", "pdist",
        "poisson_nll_loss", "pow", "prod", "reciprocal", "rsqrt", "sinh", "smooth_l1_loss",
        "soft_margin_loss", "softmax", "softmin", "softplus", "sum", "renorm", "tan", "triplet_margin_loss",
    }
)  # fmt: skip

_HALF = (torch.float16, torch.bfloat16)


def _to_float32(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in _HALF else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(v) for v in value)
    return value


def _float32_under_autocast(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # an explicit dtype= is respected, as on CUDA; outside CPU autocast nothing changes
        if torch.is_autocast_enabled("cpu") and kwargs.get("dtype") is None:
            args = _to_float32(args)
            kwargs = {k: _to_float32(v) for k, v in kwargs.items()}
        return fn(*args, **kwargs)

    return wrapper


def _targets() -> list[tuple[Any, str]]:
    owners = (torch, F, torch.Tensor)
    return [
        (o, name) for o in owners for name in sorted(CUDA_FLOAT32_OPS) if callable(getattr(o, name, None))
    ]


@contextlib.contextmanager
def cuda_autocast_policy() -> Iterator[None]:
    """While active, every CPU autocast region runs :data:`CUDA_FLOAT32_OPS` in float32, as CUDA does.

    Keep it on for the backward too where a model checkpoints activations (the recomputation runs under
    the forward's autocast state)::

        with cuda_autocast_policy():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(x).float().logsumexp(1).sum()
            loss.backward()

    The overrides are process-wide while the block runs (not thread-safe); nested use is harmless.
    """
    originals = [(owner, name, getattr(owner, name)) for owner, name in _targets()]
    for owner, name, fn in originals:
        setattr(owner, name, _float32_under_autocast(fn))
    try:
        yield
    finally:
        for owner, name, fn in reversed(originals):
            setattr(owner, name, fn)


@contextlib.contextmanager
def cuda_like_autocast(dtype: torch.dtype = torch.bfloat16, device: str = "cpu") -> Iterator[None]:
    """Autocast with CUDA's dtype policy: ``torch.autocast("cuda")`` itself on a CUDA device, on CPU
    CPU autocast inside :func:`cuda_autocast_policy`.

    Use it as a GPU user uses autocast: the forward and the loss inside, ``backward()`` after the block
    (inside an outer :func:`cuda_autocast_policy` where the model checkpoints activations).

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
    with cuda_autocast_policy(), torch.autocast("cpu", dtype=dtype):
        yield
