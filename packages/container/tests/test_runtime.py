"""Export and run-time modes: ONNX (onnxruntime), bf16 autocast, FX, BatchNorm frozen or in eval mode."""

from __future__ import annotations

import copy
import functools

import pytest
import timm
import torch
import torch.fx
from timm.layers import get_notrace_functions
from timm.utils.model import freeze_batch_norm_2d

import container  # noqa: F401  (registers the models)

NAMES = ["container_v1_light", "container_v1", "container_pam_small"]


@functools.cache
def _shared(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name).eval()


def _x(batch: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(3))


def test_onnx_container_light_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = copy.deepcopy(_shared("container_v1_light"))
    with torch.no_grad():  # a mix away from 0.5 so both branches' weights are exercised
        for blk in model.stages[3].blocks:
            blk.mixer.mix_logit.fill_(0.7)
    x = _x(1, 96)
    path = tmp_path / "container_v1_light.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_is_finite(name):
    model = _shared(name)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_x(1))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", NAMES)
def test_fx_trace_forward_and_backward(name):
    model = copy.deepcopy(_shared(name))
    x = _x(2, 32)
    tracers = [torch.fx.Tracer(autowrap_functions=tuple(get_notrace_functions()))]
    if name != "container_pam_small":  # timm's ViT position-embedding resize needs timm's tracer
        tracers.append(torch.fx.Tracer())  # our checks trace as calls for plain symbolic_trace too
    for tracer in tracers:
        gm = torch.fx.GraphModule(model, tracer.trace(model))
        with torch.no_grad():
            torch.testing.assert_close(gm(x), model(x))
    gm.train()
    gm(x).logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in gm.parameters())


@pytest.mark.parametrize("name", ["container_v1_light", "container_v1"])
def test_training_with_frozen_or_eval_batchnorm(name):
    x = _x(2, 32)
    frozen = freeze_batch_norm_2d(copy.deepcopy(_shared(name))).train()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    frozen(x).logsumexp(1).sum().backward()
    assert frozen.stages[0].blocks[0].mixer.in_proj.weight.grad is not None

    model = copy.deepcopy(_shared(name)).train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    before = model.norm.running_mean.clone()
    model(x).logsumexp(1).sum().backward()
    assert torch.equal(model.norm.running_mean, before)
    assert all(p.grad is not None for p in model.parameters())
