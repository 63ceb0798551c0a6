"""The model contract (specs/00-monorepo.md, "The model contract") as plain check functions.

Each ``check_*`` takes the model under test (built by name through timm, zero-initialised weights
randomised, eval mode) and its :class:`~ctxnets_shared.testing.spec.ModelSpec`, and raises AssertionError
naming what broke. They never modify the model they are given: checks that train or convert work on a copy,
and checks of constructor options build their own instance by name through timm, as a user would.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import timm
import torch
import torch.fx
import torch.nn as nn
from timm.layers import get_notrace_functions, get_notrace_modules
from timm.models import create_feature_extractor
from timm.utils.model import freeze_batch_norm_2d

from ctxnets_shared.models.cfg import PAPER_FIELDS
from ctxnets_shared.packages import discover_packages
from ctxnets_shared.testing.autocast import cuda_autocast_policy, cuda_like_autocast
from ctxnets_shared.testing.spec import ModelSpec
from ctxnets_shared.weights.io import CONFIG_NAME, load_pretrained, save_pretrained

__all__ = [
    "CHECKS",
    "STRUCTURAL_CHECKS",
    "build",
    "calibrate_batchnorm",
    "calibration_input",
    "check_autocast",
    "check_bad_input",
    "check_channels_last",
    "check_compile",
    "check_eval_bn_training",
    "check_features_only",
    "check_forward_backward",
    "check_forward_intermediates",
    "check_frozen_bn_training",
    "check_fx_feature_extraction",
    "check_fx_trace",
    "check_grad_checkpointing",
    "check_output_stride",
    "check_pretrained_cfg",
    "check_reset_classifier",
    "check_round_trip",
    "check_sync_bn_training",
    "check_timm_attributes",
    "check_torchscript",
    "fx_trace",
    "make_input",
    "randomize_zero_init",
]

_BN = nn.modules.batchnorm._BatchNorm


def _fail(msg: str) -> NoReturn:
    raise AssertionError(msg)


def _close(actual: torch.Tensor, expected: torch.Tensor, spec: ModelSpec, what: str) -> None:
    if actual.shape != expected.shape:
        _fail(f"{spec.name}: {what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    try:
        torch.testing.assert_close(actual.float(), expected.float(), atol=spec.atol, rtol=spec.rtol)
    except AssertionError as e:
        _fail(f"{spec.name}: {what} differ: {e}")


def randomize_zero_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every all-zero parameter random values and every BatchNorm random running statistics.

    Models start residual branches and gates at zero (a zero last BN, a zero-initialised GC transform), which
    makes those branches invisible to any numerical comparison; this makes them count. In place; returns
    the model.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.numel() and not p.detach().any():
                if p.dim() == 1 and name.endswith("weight"):  # a norm's scale: keep it around 1
                    p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        for m in model.modules():
            mean, var = getattr(m, "running_mean", None), getattr(m, "running_var", None)
            if isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor):
                mean.copy_(torch.randn(mean.shape, generator=gen) * 0.1)
                var.copy_(torch.rand(var.shape, generator=gen) + 0.5)
    return model


def calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics to those of one training-mode pass over ``x``.

    Random weights with arbitrary running statistics let activations grow through a deep network until
    float32 rounding swamps every comparison; statistics measured on real activations keep eval-mode
    outputs at unit scale, while still being far from the (0, 1) defaults. In place; returns the model.
    """
    bns = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    if not bns:
        return model
    was_training = model.training
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: after one pass, exactly that pass's statistics
    model.train()
    with torch.no_grad():
        model(x)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    return model.train(was_training)


def build(spec: ModelSpec, seed: int = 0, **kwargs: Any) -> Any:
    """``timm.create_model(spec.name, **spec.create_kwargs, **kwargs)``, seeded, randomised, in eval mode.

    All-zero parameters get random values (:func:`randomize_zero_init`), then BatchNorm statistics are
    measured on a batch that holds the checks' input (:func:`make_input`) and random images besides
    (:func:`calibrate_batchnorm`, :func:`calibration_input`).
    """
    discover_packages()  # importing the installed ctxnets packages registers their models with timm
    torch.manual_seed(seed)
    model = timm.create_model(spec.name, **{**dict(spec.create_kwargs), **kwargs})
    randomize_zero_init(model, seed)
    in_chans = int(kwargs.get("in_chans", spec.create_kwargs.get("in_chans", 3)))
    calibrate_batchnorm(model, calibration_input(spec, in_chans, seed))
    return model.eval()


def make_input(spec: ModelSpec, channels: int = 3, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A seeded (batch, channels, H, W) batch at the spec's small size."""
    h, w = size or spec.hw
    return torch.randn(spec.batch_size, channels, h, w, generator=torch.Generator().manual_seed(1))


def calibration_input(spec: ModelSpec, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """The batch :func:`build` measures BatchNorm statistics on: :func:`make_input`, then random images
    up to 8 in all.

    The checks' own images must be part of it. A deep network with random weights, in eval mode, is
    calibrated only for the images its statistics came from: on other images of the same distribution
    small mismatches compound block by block (no batch statistics renormalise them), and SE-CoTNetD-152's
    logits reached 3e4 on such an image. At that scale its split-attention softmax turns the last-digit
    differences of two correct kernels into 1e-2 differences of the logits, even in float64. With the
    checks' images in the batch, eval-mode activations stay at unit scale on them.
    """
    x = make_input(spec, channels)
    h, w = spec.hw
    extra = torch.randn(
        max(8 - x.shape[0], 0), channels, h, w, generator=torch.Generator().manual_seed(seed + 7)
    )
    return torch.cat([x, extra])


def _in_chans(model: Any) -> int:
    return int(getattr(model, "in_chans", 3))


def _precise(model: Any, x: torch.Tensor, spec: ModelSpec) -> tuple[Any, torch.Tensor]:
    # comparisons between different kernels (TorchScript, compiled code, frozen BN) run in float64:
    # float32 rounding differences grow through a deep eval-mode network with random weights
    if not spec.float64:
        return model, x
    return copy.deepcopy(model).double(), x.double()


def _logits_loss(out: torch.Tensor) -> torch.Tensor:
    # a loss every output element influences, and not a linear one (a sum would hide sign errors)
    return out.float().flatten(1).logsumexp(1).sum()


def _missing_grads(model: nn.Module) -> list[str]:
    return [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
    ]


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_buffers()}


def _num_classes(model: Any) -> int:
    return int(model.num_classes)


def check_forward_backward(model: Any, spec: ModelSpec) -> None:
    """Logits of shape (B, num_classes), finite; in training every parameter gets a finite gradient."""
    x = make_input(spec, _in_chans(model))
    with torch.no_grad():
        out = model(x)
    if out.shape != (x.shape[0], _num_classes(model)):
        _fail(f"{spec.name}: output {tuple(out.shape)}, expected {(x.shape[0], _num_classes(model))}")
    if not torch.isfinite(out).all():
        _fail(f"{spec.name}: non-finite logits")
    m = copy.deepcopy(model).train()
    _logits_loss(m(x)).backward()
    missing = _missing_grads(m)
    if missing:
        _fail(f"{spec.name}: {len(missing)} parameter(s) got no finite gradient: {missing[:8]}")


def check_timm_attributes(model: Any, spec: ModelSpec) -> None:
    """The timm model-class attributes and methods, and ``feature_info`` naming real modules."""
    for attr in ("num_classes", "num_features", "head_hidden_size", "feature_info", "pretrained_cfg"):
        if not hasattr(model, attr):
            _fail(f"{spec.name}: no attribute {attr!r}")
    methods = (
        "forward_features", "forward_head", "get_classifier", "reset_classifier", "set_grad_checkpointing",
        "group_matcher", "forward_intermediates", "prune_intermediate_layers",
    )  # fmt: skip
    for meth in methods:
        if not callable(getattr(model, meth, None)):
            _fail(f"{spec.name}: no method {meth}()")
    if spec.name not in timm.list_models():
        _fail(f"{spec.name}: not registered with timm")
    names = dict(model.named_modules())
    for info in model.feature_info:
        if info["module"] not in names:
            _fail(f"{spec.name}: feature_info module {info['module']!r} is not a submodule")
    for coarse in (False, True):
        groups = model.group_matcher(coarse=coarse)
        if not isinstance(groups, Mapping) or not groups:
            _fail(f"{spec.name}: group_matcher(coarse={coarse}) returned {groups!r}")
    nwd = getattr(model, "no_weight_decay", None)
    # names only: timm's own ViTs list tokens (``dist_token``) that a given variant may not have
    if callable(nwd) and not all(isinstance(n, str) for n in nwd()):
        _fail(f"{spec.name}: no_weight_decay() must return parameter names")


def check_pretrained_cfg(model: Any, spec: ModelSpec) -> None:
    """The pretrained_cfg fields the monorepo requires, naming real modules; where weights come from.

    A ``url`` must be https; a tag whose official weights sit behind a web page (``weights_page``, no
    direct link) must name that page over https and carry a ``notes`` line saying how to get the file.
    """
    cfg = dict(model.pretrained_cfg)
    required = ("input_size", "first_conv", "classifier", "crop_pct", "interpolation", "mean", "std")
    for key in (*required, "paper_name", "paper_ids", "origin_url"):
        if not cfg.get(key):
            _fail(f"{spec.name}: pretrained_cfg[{key!r}] is missing")
    missing_paper = [k for k in ("paper_params", "paper_gflops") if k in PAPER_FIELDS and cfg.get(k) is None]
    if missing_paper:
        _fail(f"{spec.name}: pretrained_cfg lacks the paper's {missing_paper}")
    url = cfg.get("url")
    if url and not (isinstance(url, str) and url.startswith("https://")):
        _fail(f"{spec.name}: pretrained_cfg['url'] {url!r} is not an https link")
    page = cfg.get("weights_page")
    if page and not (isinstance(page, str) and page.startswith("https://")):
        _fail(f"{spec.name}: pretrained_cfg['weights_page'] {page!r} is not an https link")
    if page and not (url or cfg.get("hf_hub_id")) and not cfg.get("notes"):
        _fail(f"{spec.name}: weights_page without a direct link needs notes saying how to get the file")
    if cfg.get("architecture") != spec.name:
        _fail(f"{spec.name}: pretrained_cfg['architecture'] is {cfg.get('architecture')!r}")
    firsts = cfg["first_conv"] if isinstance(cfg["first_conv"], (list, tuple)) else [cfg["first_conv"]]
    for first in firsts:
        try:
            conv = model.get_submodule(first)
        except AttributeError:
            _fail(f"{spec.name}: first_conv {first!r} is not a submodule")
        if getattr(conv, "in_channels", None) != cfg["input_size"][0]:
            _fail(f"{spec.name}: first_conv {first!r} does not take {cfg['input_size'][0]} channels")
    try:
        head = model.get_submodule(cfg["classifier"])
    except AttributeError:
        _fail(f"{spec.name}: classifier {cfg['classifier']!r} is not a submodule")
    if head is not model.get_classifier():
        _fail(f"{spec.name}: classifier {cfg['classifier']!r} is not get_classifier()")
    pool = cfg.get("pool_size")
    if pool:
        stride = model.feature_info[-1]["reduction"]
        expected = tuple(math.ceil(s / stride) for s in cfg["input_size"][1:])
        if tuple(pool) != expected:
            _fail(f"{spec.name}: pool_size {tuple(pool)} != input_size / total stride {expected}")


def check_reset_classifier(model: Any, spec: ModelSpec) -> None:
    """``reset_classifier(0)`` gives pooled features, ``(0, "")`` unpooled ones, ``(n)`` n logits."""
    m = copy.deepcopy(model)
    x = make_input(spec, _in_chans(m))
    hidden = int(getattr(m, "head_hidden_size", None) or m.num_features)
    with torch.no_grad():
        feats = m.forward_features(x)
        m.reset_classifier(0)
        if m(x).shape != (x.shape[0], hidden) or m.forward_head(feats, pre_logits=True).shape[-1] != hidden:
            _fail(f"{spec.name}: reset_classifier(0) does not give (B, {hidden}) features")
        if _num_classes(m) != 0:
            _fail(f"{spec.name}: reset_classifier(0) left num_classes={m.num_classes}")
        m.reset_classifier(7)
        if m(x).shape != (x.shape[0], 7) or _num_classes(m) != 7:
            _fail(f"{spec.name}: reset_classifier(7) does not give 7 logits")
        if spec.unpooled_head:
            m.reset_classifier(0, "")
            if m.forward_head(feats).dim() != 4:
                _fail(f"{spec.name}: reset_classifier(0, '') still pools")


def _check_feature_maps(feats: list[torch.Tensor], model: Any, spec: ModelSpec, hw: tuple[int, int]) -> None:
    info = model.feature_info
    chans, reds = info.channels(), info.reduction()
    if [f.shape[1] for f in feats] != chans:
        _fail(f"{spec.name}: feature channels {[f.shape[1] for f in feats]} != feature_info {chans}")
    sizes = [tuple(f.shape[-2:]) for f in feats]
    expected = [tuple(math.ceil(s / r) for s in hw) for r in reds]
    if sizes != expected:
        _fail(f"{spec.name}: feature maps {sizes} do not match feature_info reductions {reds} ({expected})")


def check_features_only(model: Any, spec: ModelSpec) -> None:
    """``features_only=True`` maps at the documented reductions, matching ``feature_info``."""
    fm = build(spec, features_only=True)
    reds = fm.feature_info.reduction()
    if tuple(reds) != tuple(spec.reductions):
        _fail(f"{spec.name}: features_only reductions {reds}, documented {list(spec.reductions)}")
    with torch.no_grad():
        feats = fm(make_input(spec))
    _check_feature_maps(feats, fm, spec, spec.hw)


def check_forward_intermediates(model: Any, spec: ModelSpec) -> None:
    """``forward_intermediates`` agrees with ``feature_info`` and ``forward_features``; bad indices fail."""
    x = make_input(spec, _in_chans(model))
    n = len(model.feature_info)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        if len(inter) != n:
            _fail(f"{spec.name}: forward_intermediates gave {len(inter)} maps for {n} feature_info entries")
        chans = [info["num_chs"] for info in model.feature_info]
        if [f.shape[1] for f in inter] != chans:
            _fail(f"{spec.name}: intermediate channels {[f.shape[1] for f in inter]} != {chans}")
        _close(final, model.forward_features(x), spec, "forward_intermediates final vs forward_features")
        last = model.forward_intermediates(x, indices=[-1], intermediates_only=True, stop_early=True)
        if len(last) != 1:
            _fail(f"{spec.name}: indices=[-1] gave {len(last)} maps")
        _close(last[0], inter[-1], spec, "indices=[-1] vs the full list's last map")
    try:
        model.forward_intermediates(x, indices=[n + 3])
    except (ValueError, IndexError, AssertionError):  # timm's own models assert
        pass
    else:
        _fail(f"{spec.name}: forward_intermediates(indices=[{n + 3}]) did not raise")
    pruned = copy.deepcopy(model)
    kept = pruned.prune_intermediate_layers(indices=[0])
    if list(kept) != [0]:
        _fail(f"{spec.name}: prune_intermediate_layers([0]) kept {kept}")
    with torch.no_grad():
        only = pruned.forward_intermediates(x, indices=[0], intermediates_only=True)
    _close(only[0], inter[0], spec, "first map after prune_intermediate_layers")


def _train_step(m: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    # callers pass two separate copies, so one step's .grad tensors stay untouched by the other's
    out = m(x)
    _logits_loss(out).backward()
    grads = {n: p.grad.detach() for n, p in m.named_parameters() if p.grad is not None}
    return out.detach(), grads


def _same_training(a: nn.Module, b: nn.Module, x: torch.Tensor, spec: ModelSpec, what: str) -> None:
    out_a, grads_a = _train_step(a, x)
    out_b, grads_b = _train_step(b, x)
    _close(out_b, out_a, spec, f"{what}: outputs")
    if set(grads_a) != set(grads_b):
        _fail(
            f"{spec.name}: {what}: parameters with gradients differ: "
            f"{sorted(set(grads_a) ^ set(grads_b))[:8]}"
        )
    for n, g in grads_a.items():
        _close(grads_b[n], g, spec, f"{what}: gradient of {n}")


def check_grad_checkpointing(model: Any, spec: ModelSpec) -> None:
    """``set_grad_checkpointing()`` gives the same outputs and gradients in training."""
    x = make_input(spec, _in_chans(model))
    plain = copy.deepcopy(model).train()
    ckpt = copy.deepcopy(model).train()
    ckpt.set_grad_checkpointing(True)
    _same_training(plain, ckpt, x, spec, "grad checkpointing")


class _TimmTracer(torch.fx.Tracer):
    """An FX tracer that treats timm's registered no-trace modules and functions as leaves."""

    def __init__(self) -> None:
        super().__init__(autowrap_functions=tuple(get_notrace_functions()))
        self._leaves = tuple(get_notrace_modules())

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self._leaves) or super().is_leaf_module(m, module_qualified_name)


def fx_trace(model: nn.Module) -> torch.fx.GraphModule:
    """``torch.fx.symbolic_trace`` honouring timm's ``register_notrace_function`` / ``_module``."""
    graph = _TimmTracer().trace(model)
    return torch.fx.GraphModule(model, graph)


def check_fx_trace(model: Any, spec: ModelSpec) -> None:
    """torch.fx symbolic tracing: the traced module equals the model forward and backward."""
    model, x = _precise(model, make_input(spec, _in_chans(model)), spec)  # traced code may take another path
    try:
        traced = fx_trace(copy.deepcopy(model))
    except Exception as e:
        _fail(f"{spec.name}: torch.fx symbolic trace failed: {type(e).__name__}: {e}")
    with torch.no_grad():
        _close(traced(x), model(x), spec, "FX-traced vs eager outputs (eval)")
    # the eval pass changed nothing, so the same traced copy takes the training step
    _same_training(copy.deepcopy(model).train(), traced.train(), x, spec, "FX training")


def check_fx_feature_extraction(model: Any, spec: ModelSpec) -> None:
    """torchvision's ``create_feature_extractor`` (through timm) equals ``forward_intermediates``.

    Also builds ``features_only=True, feature_cls="fx"`` (timm's FX feature wrapper) and checks its maps.
    """
    try:
        fm = build(spec, features_only=True, feature_cls="fx")
        with torch.no_grad():
            maps = fm(make_input(spec))
    except Exception as e:
        _fail(f"{spec.name}: features_only with feature_cls='fx' failed: {type(e).__name__}: {e}")
    maps = list(maps.values()) if isinstance(maps, Mapping) else list(maps)
    if len(maps) != len(spec.reductions):
        _fail(f"{spec.name}: feature_cls='fx' gave {len(maps)} maps for {len(spec.reductions)} reductions")
    model, x = _precise(model, make_input(spec, _in_chans(model)), spec)
    nodes = {info["module"]: str(i) for i, info in enumerate(model.feature_info)}
    try:
        extractor = create_feature_extractor(copy.deepcopy(model), return_nodes=nodes)
    except Exception as e:
        _fail(f"{spec.name}: create_feature_extractor failed: {type(e).__name__}: {e}")
    with torch.no_grad():
        got = list(extractor(x).values())
        want = model.forward_intermediates(x, intermediates_only=True)
    if len(got) != len(want):
        _fail(f"{spec.name}: FX feature extractor gave {len(got)} maps, forward_intermediates {len(want)}")
    for i, (g, w) in enumerate(zip(got, want)):
        if g.dim() == 3 and w.dim() == 4:  # a ViT block's (B, prefix + H*W, C) tokens vs its NCHW map
            h, wd = w.shape[-2:]
            g = g[:, -h * wd :].transpose(1, 2).reshape(w.shape)
        elif g.dim() == 4 and w.dim() == 4 and g.shape != w.shape and g.permute(0, 3, 1, 2).shape == w.shape:
            g = g.permute(0, 3, 1, 2)  # an NHWC stage output
        _close(g, w, spec, f"FX feature map {i} ({model.feature_info[i]['module']})")


def check_torchscript(model: Any, spec: ModelSpec) -> None:
    """``torch.jit.script`` works and equals eager (only for models the package declares scriptable)."""
    model, x = _precise(model, make_input(spec, _in_chans(model)), spec)
    try:
        scripted = torch.jit.script(copy.deepcopy(model))
    except Exception as e:
        _fail(f"{spec.name}: torch.jit.script failed: {type(e).__name__}: {str(e)[:400]}")
    with torch.no_grad():
        _close(scripted(x), model(x), spec, "TorchScript vs eager")


def check_compile(model: Any, spec: ModelSpec) -> None:
    """``torch.compile`` (the spec's backend) gives the eager outputs."""
    assert spec.compile_backend is not None
    model, x = _precise(model, make_input(spec, _in_chans(model)), spec)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(copy.deepcopy(model), backend=spec.compile_backend)
        with torch.no_grad():
            got = compiled(x)
    finally:
        torch._dynamo.reset()
    with torch.no_grad():
        _close(got, model(x), spec, f"torch.compile ({spec.compile_backend}) vs eager")


def _device() -> str:
    # the dtype checks run on the GPU too when one is present (a CUDA build on a machine with a device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def _half_step(
    model: nn.Module, x: torch.Tensor, dtype: torch.dtype, device: str
) -> tuple[torch.Tensor, nn.Module]:
    m = copy.deepcopy(model).to(device).train()
    if device == "cpu" and dtype == torch.float16:
        # CPU has no fast float16 kernel for a convolution's weight gradient (seconds per layer, where
        # bfloat16 takes milliseconds): this step leaves conv weights frozen, so gradients still flow
        # through every conv in float16; the bfloat16 step (and both steps on a GPU) checks their gradients
        for conv in m.modules():
            if isinstance(conv, nn.modules.conv._ConvNd):
                conv.weight.requires_grad_(False)
    # the float32 policy stays on for backward: activation checkpointing recomputes there under the
    # forward's autocast state, and on CUDA that state brings the policy with it
    with cuda_autocast_policy():
        with cuda_like_autocast(dtype, device):
            out = m(x.to(device))
            loss = _logits_loss(out)
        loss.backward()  # outside autocast, as a GPU training loop does
    return out.detach(), m


def check_autocast(model: Any, spec: ModelSpec) -> None:
    """Inference and a training step under CUDA's autocast dtype policy, in bfloat16 and float16.

    CUDA's autocast runs convolutions and matrix products in half precision but returns float32 from
    softmax, layer/group norm, losses and reductions, so a model meets float32 tensors beside bf16/fp16
    activations (:mod:`ctxnets_shared.testing.autocast` emulates it on CPU; on a machine with a GPU the
    real policy runs there). Logits must be finite and of the right shape, and every parameter must get a
    finite gradient from a backward outside the autocast region (on CPU the float16 step freezes conv
    weights, whose float16 weight gradient has no fast CPU kernel; bfloat16 checks them).
    """
    x = make_input(spec, _in_chans(model))
    device = _device()
    for dtype in (torch.bfloat16, torch.float16):
        what = f"{str(dtype).removeprefix('torch.')} autocast ({device}, CUDA dtype policy)"
        try:
            m = model if device == "cpu" else copy.deepcopy(model).to(device)
            with torch.no_grad(), cuda_like_autocast(dtype, device):
                out = m(x.to(device))
            if out.shape != (x.shape[0], _num_classes(model)) or not torch.isfinite(out.float()).all():
                _fail(f"{spec.name}: {what} inference gives {tuple(out.shape)} logits, or non-finite ones")
            out, m = _half_step(model, x, dtype, device)
        except AssertionError:
            raise
        except Exception as e:
            _fail(f"{spec.name}: {what} failed: {type(e).__name__}: {str(e)[:300]}")
        if not torch.isfinite(out.float()).all():
            _fail(f"{spec.name}: {what} training gives non-finite logits")
        missing = _missing_grads(m)
        if missing:
            _fail(f"{spec.name}: {what} training: no finite gradient for {missing[:8]}")


#: the batch size of the channels_last check: >1 catches a ``view`` that only works for one image
CHANNELS_LAST_BATCH = 4


def check_channels_last(model: Any, spec: ModelSpec) -> None:
    """A channels_last batch of 4 gives the NCHW outputs, in eval mode and in a training step (gradients
    too)."""
    x = calibration_input(spec, _in_chans(model))[:CHANNELS_LAST_BATCH]  # images the BN statistics know
    model, x = _precise(model, x, spec)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            _close(model(x_cl), model(x), spec, "channels_last vs NCHW outputs (eval)")
        a, b = copy.deepcopy(model).train(), copy.deepcopy(model).train()
        out_a, grads_a = _train_step(a, x)
        out_b, grads_b = _train_step(b, x_cl)
    except AssertionError:
        raise
    except Exception as e:
        _fail(f"{spec.name}: channels_last input failed: {type(e).__name__}: {str(e)[:300]}")
    _close(out_b, out_a, spec, "channels_last training outputs")
    for n, g in grads_a.items():
        if n not in grads_b:
            _fail(f"{spec.name}: channels_last training: no gradient for {n}")
        _close(grads_b[n], g, spec, f"channels_last training: gradient of {n}")


def _bn_eval_reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # the model in training mode except that every BatchNorm uses its running statistics
    with torch.no_grad():
        return copy.deepcopy(model).eval()(x)


def _finetune(m: nn.Module, x: torch.Tensor, spec: ModelSpec, what: str) -> torch.Tensor:
    try:
        out = m(x)
        _logits_loss(out).backward()
    except Exception as e:
        _fail(f"{spec.name}: training with {what} failed: {type(e).__name__}: {str(e)[:300]}")
    missing = _missing_grads(m)
    if missing:
        _fail(f"{spec.name}: training with {what}: no finite gradient for {missing[:8]}")
    return out.detach()


def _check_buffers_unchanged(
    before: dict[str, torch.Tensor], m: nn.Module, spec: ModelSpec, what: str
) -> None:
    after = dict(m.named_buffers())
    moved = [k for k, v in before.items() if k in after and not torch.equal(v, after[k])]
    if moved:
        _fail(f"{spec.name}: training with {what} moved running statistics: {moved[:8]}")


def check_frozen_bn_training(model: Any, spec: ModelSpec) -> None:
    """Fine-tuning with ``freeze_batch_norm_2d`` (detectron2/mmdet default): runs, computes eval-mode BN."""
    model, x = _precise(model, make_input(spec, _in_chans(model)), spec)
    m = freeze_batch_norm_2d(copy.deepcopy(model)).train()
    if any(type(mod) in (nn.BatchNorm2d, nn.SyncBatchNorm) for mod in m.modules()):
        _fail(f"{spec.name}: freeze_batch_norm_2d left BatchNorm2d modules (hidden from named_children?)")
    before = _buffers(m)
    out = _finetune(m, x, spec, "frozen BatchNorm")
    _close(out, _bn_eval_reference(model, x), spec, "frozen-BN training outputs vs eval-mode BN")
    _check_buffers_unchanged(before, m, spec, "frozen BatchNorm")


def check_eval_bn_training(model: Any, spec: ModelSpec) -> None:
    """Training with every BatchNorm in eval mode: uses and keeps the running statistics."""
    model, x = _precise(model, make_input(spec, _in_chans(model)), spec)
    m = copy.deepcopy(model).train()
    for mod in m.modules():
        if isinstance(mod, _BN):
            mod.eval()
    before = _buffers(m)
    out = _finetune(m, x, spec, "BatchNorm in eval mode")
    _close(out, _bn_eval_reference(model, x), spec, "eval-BN training outputs vs eval model")
    _check_buffers_unchanged(before, m, spec, "BatchNorm in eval mode")


def check_sync_bn_training(model: Any, spec: ModelSpec) -> None:
    """A SyncBatchNorm-converted model (one process) trains exactly like the BatchNorm one."""
    x = make_input(spec, _in_chans(model))
    plain = copy.deepcopy(model).train()
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model)).train()
    if not any(isinstance(mod, nn.SyncBatchNorm) for mod in synced.modules()) and any(
        isinstance(mod, nn.BatchNorm2d) for mod in plain.modules()
    ):
        _fail(f"{spec.name}: convert_sync_batchnorm found none of the model's BatchNorms")
    try:
        _same_training(plain, synced, x, spec, "SyncBatchNorm")
    except AssertionError:
        raise
    except Exception as e:
        _fail(f"{spec.name}: training with SyncBatchNorm failed: {type(e).__name__}: {str(e)[:300]}")
    stats = [k for k in dict(plain.named_buffers()) if k.endswith(("running_mean", "running_var"))]
    sb = dict(synced.named_buffers())
    for k in stats:
        _close(sb[k], dict(plain.named_buffers())[k], spec, f"running statistic {k} after SyncBN step")


def check_output_stride(model: Any, spec: ModelSpec) -> None:
    """``output_stride`` (dilated last stages): final maps and features_only reductions capped at it."""
    x = make_input(spec, _in_chans(model))
    for os_ in spec.output_strides:
        try:
            m = build(spec, output_stride=os_)
            fm = build(spec, features_only=True, output_stride=os_)
        except Exception as e:
            _fail(f"{spec.name}: output_stride={os_} failed to build: {type(e).__name__}: {e}")
        with torch.no_grad():
            feats = m.forward_features(x)
            maps = fm(x)
        expected = tuple(math.ceil(s / os_) for s in spec.hw)
        if tuple(feats.shape[-2:]) != expected:
            _fail(
                f"{spec.name}: output_stride={os_} gives {tuple(feats.shape[-2:])} maps, expected {expected}"
            )
        reds = fm.feature_info.reduction()
        capped = [min(r, os_) for r in spec.reductions]
        if list(reds) != capped:
            _fail(f"{spec.name}: output_stride={os_}: feature_info reductions {reds}, expected {capped}")
        _check_feature_maps(maps, fm, spec, spec.hw)
        _finetune(m.train(), x, spec, f"output_stride={os_}")
    bad = 12
    try:
        timm.create_model(spec.name, output_stride=bad, **dict(spec.create_kwargs))
    except ValueError:
        pass
    else:
        _fail(f"{spec.name}: output_stride={bad} did not raise a ValueError naming the valid values")


def check_round_trip(model: Any, spec: ModelSpec) -> None:
    """save_pretrained -> timm ``local-dir:`` and ``load_pretrained`` rebuild the same model, kwargs kept."""
    m = build(spec, seed=3, **dict(spec.round_trip_kwargs))
    x = make_input(spec, _in_chans(m))
    with torch.no_grad():
        want = m(x)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(m, tmp)
        config = json.loads((Path(tmp) / CONFIG_NAME).read_text())
        saved = config.get("model_args") or {}
        for k, v in spec.round_trip_kwargs.items():
            if saved.get(k) != json.loads(json.dumps(v)):
                _fail(f"{spec.name}: config.json model_args[{k!r}] = {saved.get(k)!r}, built with {v!r}")
        try:
            via_timm = timm.create_model(
                f"local-dir:{tmp}", pretrained=True, **dict(spec.create_kwargs)
            ).eval()
            via_ours = load_pretrained(tmp)
        except Exception as e:
            _fail(f"{spec.name}: reloading a model built with {dict(spec.round_trip_kwargs)} failed: {e}")
    with torch.no_grad():
        _close(via_timm(x), want, spec, "timm local-dir round trip")
        _close(via_ours(x), want, spec, "load_pretrained round trip")


def _raises_value_error(fn: Callable[[], Any]) -> str | None:
    try:
        fn()
    except ValueError as e:
        return str(e) or "(empty message)"
    except Exception as e:
        return f"!{type(e).__name__}: {e}"
    return None


def check_bad_input(model: Any, spec: ModelSpec) -> None:
    """Wrong channel counts, too-small images and non-4-D input raise a ValueError with a message."""
    c = _in_chans(model)
    h, w = spec.hw
    cases: Iterable[tuple[str, torch.Tensor]] = (
        (f"{c + 1} channels", torch.randn(1, c + 1, h, w)),
        (f"a {spec.min_img_size - 1}-pixel side", torch.randn(2, c, spec.min_img_size - 1, w)),
        ("a 3-D tensor", torch.randn(c, h, w)),
    )
    with torch.no_grad():
        for what, x in cases:
            msg = _raises_value_error(functools.partial(model, x))
            if msg is None:
                _fail(f"{spec.name}: {what} was accepted")
            if msg.startswith("!"):
                _fail(f"{spec.name}: {what} raised {msg[1:]}, expected a ValueError naming the problem")
        out = model(torch.randn(2, c, spec.min_img_size, spec.min_img_size))
    if not torch.isfinite(out).all():
        _fail(f"{spec.name}: the documented smallest input {spec.min_img_size} gives non-finite logits")


#: the checks a deeper variant keeps when its blocks are those of a sibling that runs the whole kit
STRUCTURAL_CHECKS: tuple[str, ...] = (
    "forward_backward",
    "timm_attributes",
    "pretrained_cfg",
    "features_only",
    "frozen_bn_training",
    "round_trip",
    "bad_input",
    "autocast",
    "channels_last",
)

#: check name -> (function, whether it applies to a spec)
CHECKS: dict[str, tuple[Callable[[Any, ModelSpec], None], Callable[[ModelSpec], str | None]]] = {
    "forward_backward": (check_forward_backward, lambda s: None),
    "timm_attributes": (check_timm_attributes, lambda s: None),
    "pretrained_cfg": (check_pretrained_cfg, lambda s: None),
    "reset_classifier": (check_reset_classifier, lambda s: None),
    "features_only": (check_features_only, lambda s: None),
    "forward_intermediates": (check_forward_intermediates, lambda s: None),
    "grad_checkpointing": (check_grad_checkpointing, lambda s: None),
    "fx_trace": (check_fx_trace, lambda s: None),
    "fx_feature_extraction": (check_fx_feature_extraction, lambda s: None),
    "torchscript": (check_torchscript, lambda s: None if s.torchscript else "not declared scriptable"),
    "compile": (check_compile, lambda s: None if s.compile_backend else "compile check disabled in spec"),
    "autocast": (check_autocast, lambda s: None),
    "channels_last": (check_channels_last, lambda s: None),
    "frozen_bn_training": (check_frozen_bn_training, lambda s: None),
    "eval_bn_training": (check_eval_bn_training, lambda s: None),
    "sync_bn_training": (check_sync_bn_training, lambda s: None),
    "output_stride": (
        check_output_stride,
        lambda s: None if s.output_strides else "no output_stride (not a CNN)",
    ),
    "round_trip": (check_round_trip, lambda s: None),
    "bad_input": (check_bad_input, lambda s: None),
}
