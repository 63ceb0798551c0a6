"""CotLayer / CoXtLayer: against the official forward, memory-efficient training, ablations (Tables 5-6),
dtypes, memory formats, compile, ONNX."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

from cot import ABLATIONS, CotLayer, CoXtLayer, SeConv2d
from ctxnets_shared.profiling import count_params
from ctxnets_shared.testing import cuda_autocast_policy, cuda_like_autocast

# specs/cot.md (paper Tables 5 and 6): CoTNet-50 parameter counts of the ablation variants, in millions
ABLATION_PARAMS_M = {
    "static_only": 17.1,
    "dynamic_only": 20.3,
    "linear_fusion": 20.3,
    "concatenate": 22.8,
    "key_kernel_1": 19.7,
    "key_kernel_3": 22.2,
    "key_kernel_5": 28.5,
    "qkv_3x3": 29.5,
    "remove_query": 21.6,
    "remove_key": 21.6,
}


def _layer(cls=CotLayer, dim=32, seed=0, **kwargs):
    torch.manual_seed(seed)
    layer = cls(dim, **kwargs)
    for p in layer.parameters():  # away from the identity-ish init so every path matters
        p.data.normal_(0, 0.3)
    return layer


@pytest.mark.parametrize("cls", [CotLayer, CoXtLayer])
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_matches_official_forward_float64(cls, memory_efficient, official_cot):
    layer = _layer(cls, memory_efficient=memory_efficient).double().train()
    x = torch.randn(2, 32, 5, 7, dtype=torch.float64, requires_grad=True)
    ref = official_cot(layer, x)
    out = layer(x)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    params = [x, *layer.parameters()]
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cls", [CotLayer, CoXtLayer])
def test_eval_and_no_grad_match_official_forward(cls, official_cot):
    layer = _layer(cls).eval()
    x = torch.randn(1, 32, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), official_cot(layer, x), rtol=1e-4, atol=1e-5)


def test_layer_gradcheck_float64():
    layer = _layer(CotLayer, dim=8).double().eval()
    x = torch.randn(1, 8, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


@pytest.mark.parametrize("name", list(ABLATION_PARAMS_M))
def test_ablation_param_counts_match_paper(name):
    model = timm.create_model("cotnet50", cot_kwargs=ABLATIONS[name])
    assert count_params(model) / 1e6 == pytest.approx(ABLATION_PARAMS_M[name], rel=0.03)
    layer = _layer(CotLayer, dim=32, **ABLATIONS[name]).train()
    x = torch.randn(2, 32, 6, 6, requires_grad=True)
    out = layer(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in layer.parameters())


def test_ablations_change_the_computation():
    x = torch.randn(2, 32, 6, 6)
    full = _layer(CotLayer, seed=1).eval()
    static = _layer(CotLayer, seed=1, context="static").eval()
    static.key_embed.load_state_dict(full.key_embed.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(static(x), full.key_embed(x))  # Static Context is the key conv only
        assert not torch.allclose(full(x), static(x))


def test_bad_options_raise():
    with pytest.raises(ValueError, match="fusion"):
        CotLayer(32, fusion="mul")
    with pytest.raises(ValueError, match="divisible"):
        CotLayer(36)


def test_torchscript_layer():
    for cls in (CotLayer, CoXtLayer):
        layer = _layer(cls).eval()
        x = torch.randn(1, 32, 7, 7)
        with torch.no_grad():
            torch.testing.assert_close(torch.jit.script(layer)(x), layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast_no_nan(dtype):
    torch.manual_seed(0)
    model = timm.create_model("cotnext50_2x48d", num_classes=10).train()
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=dtype):
        out = model(x)
    assert torch.isfinite(out).all()
    out.float().logsumexp(1).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        ref = model(x)
    with torch.no_grad():
        torch.testing.assert_close(ref.float(), model(x), rtol=0.1, atol=0.1)


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_torch_compile_layer_forward_backward(memory_efficient):
    # compiled: the aggregation is an opaque operator with the hand-written backward, and a
    # memory-efficient layer is a checkpoint region the compiler recomputes; same outputs, gradients
    # and BN running statistics (updated once) as the eager layer
    layer = _layer(CotLayer, dim=16, memory_efficient=memory_efficient).train()
    eager = copy.deepcopy(layer)
    compiled = torch.compile(layer, backend="inductor")
    x = torch.randn(2, 16, 6, 5, requires_grad=True)
    out, ref = compiled(x), eager(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, [x, *layer.parameters()], g)
    want = torch.autograd.grad(ref, [x, *eager.parameters()], g)
    for a, b in zip(got, want):  # float32 sums in another order: parameter gradients agree to ~1e-4
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    for (name, a), (_, b) in zip(layer.named_buffers(), eager.named_buffers()):
        torch.testing.assert_close(a, b, msg=name)
    assert int(layer.bn.num_batches_tracked) == 1


def test_aggregation_operators_pass_opcheck():
    # the custom operator torch.compile sees: schema, fake (meta) kernels and autograd registration
    from cot import aggregation

    g = torch.Generator().manual_seed(0)
    v = torch.randn(2, 8, 5, 4, generator=g, requires_grad=True)
    w = torch.randn(2, 2, 9, 5, 4, generator=g, requires_grad=True)
    torch.library.opcheck(aggregation._aggregate_op, (v, w, 3, 2))


def _onnx_parity(module, x, tmp_path, rtol, atol):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = tmp_path / "m.onnx"
    torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        want = module(x)
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("cls", [CotLayer, CoXtLayer])
def test_onnx_layer_matches_onnxruntime(cls, tmp_path):
    _onnx_parity(_layer(cls).eval(), torch.randn(1, 32, 9, 7), tmp_path, 1e-4, 1e-4)


def test_onnx_cotnet50_matches_onnxruntime(tmp_path):
    torch.manual_seed(0)
    _onnx_parity(timm.create_model("cotnet50").eval(), torch.randn(1, 3, 64, 64), tmp_path, 1e-3, 1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA check: needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_matches_fp32(dtype):
    layer = _layer(CotLayer, dim=64).cuda().eval()
    x = torch.randn(2, 64, 14, 14, device="cuda")
    with torch.no_grad():
        ref = layer(x)
        with torch.autocast("cuda", dtype=dtype):
            out = layer(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("cls", [CotLayer, CoXtLayer])
def test_memory_efficient_training_is_exact(cls, compiled):
    # checkpointing the layer's tail: same output, every gradient and every BN buffer (moved once), in
    # float64, eager and compiled (aot_eager: graph capture and AOT autograd, exact ops)
    fast = _layer(cls, memory_efficient=True).double().train()
    plain = copy.deepcopy(fast)
    plain.memory_efficient = False
    run = torch.compile(fast, backend="aot_eager") if compiled else fast
    x = torch.randn(2, 32, 6, 5, dtype=torch.float64, requires_grad=True)
    out, ref = run(x), plain(x)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, [x, *fast.parameters()], g)
    want = torch.autograd.grad(ref, [x, *plain.parameters()], g)
    for (name, _), a, b in zip([("x", x), *fast.named_parameters()], got, want):
        torch.testing.assert_close(a, b, msg=name)
    for (name, a), (_, b) in zip(fast.named_buffers(), plain.named_buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert int(fast.bn.num_batches_tracked) == 1


@pytest.mark.parametrize("cls", [CotLayer, CoXtLayer])
def test_dilated_layer_matches_official_forward_float64(cls, official_cot):
    # output_stride 8/16: the static key conv and the aggregation window both dilated
    layer = _layer(cls, dilation=2).double().train()
    assert layer.key_embed[0].dilation == (2, 2) and layer.key_embed[0].padding == (2, 2)
    x = torch.randn(2, 32, 6, 5, dtype=torch.float64)
    ref = official_cot(layer, x)
    torch.testing.assert_close(layer(x), ref)
    dense = copy.deepcopy(layer)
    dense.dilation = 1
    dense.key_embed[0].dilation, dense.key_embed[0].padding = (1, 1), (1, 1)
    assert not torch.allclose(dense(x), ref)


def test_radix_other_than_two_is_a_clear_error():
    with pytest.raises(ValueError, match="radix must be 2"):
        CotLayer(32, radix=4)
    with pytest.raises(ValueError, match="dilation must be >= 1"):
        CotLayer(32, dilation=0)


def _convert_norms(layer, case):
    """The BatchNorm set-ups of downstream fine-tuning (detectors / segmenters)."""
    from timm.utils.model import freeze_batch_norm_2d

    if case == "frozen":
        return freeze_batch_norm_2d(layer)
    if case == "eval_bn":
        for m in layer.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
    elif case == "sync":
        layer = torch.nn.SyncBatchNorm.convert_sync_batchnorm(layer)
    elif case == "no_running_stats":
        for m in layer.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.track_running_stats = False
                m.running_mean = m.running_var = m.num_batches_tracked = None
    return layer


def _saved_numel(fn):
    """Elements of the tensors autograd saves for backward while ``fn`` runs, and its result."""
    numel = [0]

    def pack(t):
        numel[0] += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return numel[0], out


@pytest.mark.parametrize("case", ["plain", "frozen", "eval_bn", "sync", "no_running_stats"])
@pytest.mark.parametrize("cls", [CotLayer, CoXtLayer])
def test_recompute_with_every_batchnorm_setup(cls, case):
    # outputs, gradients and BN buffers equal to storing everything; statistics move once
    torch.manual_seed(0)
    base = _layer(cls).double().train()
    for m in base.modules():  # non-trivial running statistics: eval-mode and frozen BN read them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    fast = _convert_norms(copy.deepcopy(base), case)
    plain = copy.deepcopy(fast)
    plain.memory_efficient = False
    x = torch.randn(2, 32, 6, 5, dtype=torch.float64, requires_grad=True)
    numel_stored, ref = _saved_numel(lambda: plain(x))
    numel_fast, out = _saved_numel(lambda: fast(x))
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, [x, *fast.parameters()], g)
    want = torch.autograd.grad(ref, [x, *plain.parameters()], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    for (name, a), (_, b) in zip(fast.named_buffers(), plain.named_buffers()):
        torch.testing.assert_close(a, b, msg=name)
    buffers = dict(fast.named_buffers())
    before = dict(_convert_norms(copy.deepcopy(base), case).named_buffers())
    if case == "plain":
        assert int(fast.bn.num_batches_tracked) == 1
        assert not torch.equal(buffers["bn.running_mean"], before["bn.running_mean"])
    elif case == "sync":
        assert int(fast.bn.num_batches_tracked) == 1
    elif case in ("frozen", "eval_bn"):
        for name, b in before.items():
            torch.testing.assert_close(buffers[name], b, msg=name)
    assert numel_fast < 0.7 * numel_stored  # with every kind of norm


@pytest.mark.parametrize(
    "cls, ablation",
    [
        (CotLayer, ""),
        (CoXtLayer, ""),
        (CotLayer, "concatenate"),
        (CotLayer, "remove_key"),
        (CoXtLayer, "qkv_3x3"),
    ],
)
def test_fx_symbolic_trace_layer(cls, ablation):
    # torch.fx: the step-by-step forward, the aggregation one leaf node; forward and backward
    layer = _layer(cls, **ABLATIONS.get(ablation, {})).double().train()
    traced = torch.fx.symbolic_trace(layer)
    targets = [n.target for n in traced.graph.nodes if n.op == "call_function"]
    assert any(getattr(t, "__name__", "") == "local_aggregate" for t in targets)
    ref_layer = copy.deepcopy(layer)
    x = torch.randn(2, 32, 5, 6, dtype=torch.float64, requires_grad=True)
    out, ref = traced(x), ref_layer(x)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    names = [n for n, _ in ref_layer.named_parameters()]
    traced_params = dict(traced.named_parameters())  # the graph module registers them in call order
    got = torch.autograd.grad(out, [x, *(traced_params[n] for n in names)], g)
    want = torch.autograd.grad(ref, [x, *ref_layer.parameters()], g)
    for name, a, b in zip(["x", *names], got, want):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("cls", [CotLayer, CoXtLayer, SeConv2d])
def test_channels_last_in_channels_last_out(cls, train):
    layer = (_layer(cls, dim=32) if cls is not SeConv2d else SeConv2d(32, 32)).double().train(train)
    plain = copy.deepcopy(layer)
    x = torch.randn(3, 32, 6, 5, dtype=torch.float64)
    x_cl = x.to(memory_format=torch.channels_last).requires_grad_()
    x = x.requires_grad_()
    out, ref = layer.to(memory_format=torch.channels_last)(x_cl), plain(x)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert ref.is_contiguous()
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, [x_cl, *layer.parameters()], g)
    want = torch.autograd.grad(ref, [x, *plain.parameters()], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("memory_efficient", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls", [CotLayer, CoXtLayer])
def test_trains_under_cuda_autocast_policy(cls, dtype, memory_efficient):
    # CUDA autocast runs group_norm (and softmax) in float32 while the convolutions give half precision:
    # the aggregation meets a float32 weight and a half value map
    layer = _layer(cls, memory_efficient=memory_efficient).train()
    x = torch.randn(2, 32, 6, 5, requires_grad=True)
    seen = []
    layer.embed[4].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    # the policy stays on for backward, where checkpointing recomputes under autocast (as CUDA's does)
    with cuda_autocast_policy():
        with cuda_like_autocast(dtype):
            out = layer(x)
        assert seen[0] == torch.float32 and torch.isfinite(out).all()
        out.float().square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
