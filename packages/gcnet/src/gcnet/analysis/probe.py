"""Forward hooks that capture what the paper's Section 3 analyses: each attention block's input, its output
before fusion and its attention maps, for every query position (Cao et al., "Global Context Networks",
TPAMI, Sec. 3.2, Fig. 3 (5) "att").

A module takes part if it has an ``attention_map(x) -> (B, N_q, N_k)`` method (gcnet's
:class:`~gcnet.NonLocalBlock` gives one map per query, N_q = N_k = H*W; :class:`~gcnet.GlobalContextBlock`
and :class:`~gcnet.SimplifiedNonLocalBlock` one query-independent map, N_q = 1) or if it is a
:class:`~gcnet.analysis.attention.MultiHeadSelfAttention2d` (maps averaged over heads).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from gcnet.analysis.attention import MultiHeadSelfAttention2d
from gcnet.analysis.distance import average_cosine_distance

__all__ = [
    "SUPPORTED",
    "AttentionProbe",
    "AttentionRecord",
    "attention_modules",
    "capture_attention",
    "unsupported_attention",
    "upsample_maps",
]

#: what the probe reads, for error messages
SUPPORTED = (
    "GlobalContextBlock, SimplifiedNonLocalBlock and NonLocalBlock (gcnet), "
    "gcnet.analysis.MultiHeadSelfAttention2d, or any module with an attention_map(x) -> (B, N_q, N_k) method"
)
# attention of other packages, matched by class name (paper packages never import each other), and why
# the probe has no (B, N_q, N_k) map of it
_NOT_SUPPORTED = {
    "CotLayer": "local K x K attention per position (CoT), not a map over all positions",
    "CoXtLayer": "local K x K attention per position (CoT), not a map over all positions",
    "ContextAggregation": "Container's mixed affinity, which exposes no attention_map",
    "MultiHeadAttention": "attention on (B, H, W, C) tokens (HIRI-ViT), which exposes no attention_map",
    "PamAttention": "attention on ViT tokens (Container-PAM), not over an NCHW map",
}


def _mhsa_attention(module: MultiHeadSelfAttention2d, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) of a MultiHeadSelfAttention2d, mean over heads: (B, N, N_kv)."""
    q = module.to_heads(module.q(x))
    k = module.to_kv_heads(module.kv(module.sr(x)))[0]
    return (q @ k.transpose(-1, -2) * module.head_dim**-0.5).softmax(dim=-1).mean(dim=1)


def _attention_fn(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if isinstance(module, MultiHeadSelfAttention2d):
        return lambda x: _mhsa_attention(module, x)
    fn = getattr(module, "attention_map", None)
    return fn if callable(fn) else None


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module of ``model`` whose attention maps can be captured, by qualified name."""
    return {name: m for name, m in model.named_modules() if _attention_fn(m) is not None}


def unsupported_attention(model: nn.Module) -> str:
    """Why ``model`` has nothing to probe: the supported block types, and the attention it does have."""
    found: dict[str, int] = {}
    for m in model.modules():
        name = type(m).__name__
        if name in _NOT_SUPPORTED:
            found[name] = found.get(name, 0) + 1
    has = "; ".join(f"{n} x{c}: {_NOT_SUPPORTED[n]}" for n, c in found.items())
    return f"{type(model).__name__} has no attention blocks the analysis supports ({SUPPORTED})" + (
        f"; it has {has}" if has else ""
    )


@dataclass
class AttentionRecord:
    """What one attention block saw and produced on one batch.

    Attributes:
        name: the module's qualified name in the model.
        input: (B, C, H, W) block input ``x``.
        output: (B, C, H, W) block output before fusion, ``z - x``.
        attention: (B, N_q, N_k) attention map per query position (N_q = 1: query-independent).
        key_size: (H_k, W_k) grid of the attention map's positions (N_k = H_k * W_k).
    """

    name: str
    input: torch.Tensor
    output: torch.Tensor
    attention: torch.Tensor
    key_size: tuple[int, int]

    @property
    def query_independent(self) -> bool:
        return self.attention.shape[1] == 1

    def query_index(self, query: tuple[float, float]) -> int:
        """Flat index of a query given as relative (y, x) in [0, 1] of the block's map."""
        y, x = query
        if not (0.0 <= y <= 1.0 and 0.0 <= x <= 1.0):
            raise ValueError(f"query positions are relative (y, x) in [0, 1], got {query}")
        if self.query_independent:
            return 0
        h, w = self.input.shape[2], self.input.shape[3]
        return min(int(y * h), h - 1) * w + min(int(x * w), w - 1)

    def maps(self, queries: Sequence[tuple[float, float]]) -> torch.Tensor:
        """Attention maps of ``queries`` (relative (y, x)): (B, Q, H_k, W_k)."""
        idx = [self.query_index(q) for q in queries]
        return self.attention[:, idx].unflatten(2, self.key_size)

    def distances(self) -> dict[str, float]:
        """Table 1's columns, averaged over the batch: input, output and attention-map distances."""
        att = self.attention
        if self.query_independent:  # the same map for every query position
            att = att.expand(-1, self.input.shape[2] * self.input.shape[3], -1)
        return {
            "input": average_cosine_distance(self.input.flatten(2).transpose(1, 2)).mean().item(),
            "output": average_cosine_distance(self.output.flatten(2).transpose(1, 2)).mean().item(),
            "att": average_cosine_distance(att).mean().item(),
        }


class AttentionProbe:
    """Context manager: forward hooks on the attention blocks of ``model`` fill :attr:`records`.

    Args:
        model: any network.
        names: qualified names of the modules to probe; None for every module :func:`attention_modules`
            finds.

    Raises:
        ValueError: a name that is not an attention module of ``model``, or none found.
    """

    def __init__(self, model: nn.Module, names: Iterable[str] | None = None) -> None:
        found = attention_modules(model)
        if names is not None:
            names = list(names)
            unknown = [n for n in names if n not in found]
            if unknown:
                raise ValueError(f"not attention modules of the model: {unknown}; available: {list(found)}")
            found = {n: found[n] for n in names}
        if not found:
            raise ValueError(unsupported_attention(model))
        self.modules = found
        self.records: dict[str, AttentionRecord] = {}
        self._handles: list[Any] = []

    def _hook(self, name: str) -> Callable[..., None]:
        get_attention = _attention_fn(self.modules[name])
        assert get_attention is not None

        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            x = args[0]
            with torch.no_grad():
                attention = get_attention(x).detach().float()
                n_k = attention.shape[-1]
                key_size = _key_grid(x.shape[2], x.shape[3], n_k)
            self.records[name] = AttentionRecord(
                name, x.detach().float(), (output - x).detach().float(), attention, key_size
            )

        return hook

    def __enter__(self) -> AttentionProbe:
        self.records = {}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _key_grid(h: int, w: int, n_k: int) -> tuple[int, int]:
    """(H_k, W_k) of N_k key positions of an H x W map (smaller when keys were spatially reduced)."""
    if n_k == h * w:
        return h, w
    r = round((h * w / n_k) ** 0.5)
    return max(h // r, 1), max(w // r, 1)


def capture_attention(
    model: nn.Module, images: torch.Tensor, names: Iterable[str] | None = None
) -> dict[str, AttentionRecord]:
    """Run ``model`` once (eval mode, no grad) on ``images`` (B, C, H, W) and return the records."""
    was_training = model.training
    model.eval()
    try:
        with AttentionProbe(model, names) as probe, torch.no_grad():
            model(images)
    finally:
        model.train(was_training)
    return probe.records


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, Q, h, w) attention maps -> (B, Q, H, W), bilinear, for drawing over the image."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
