"""CARE as specified: loss values, gradient paths, momentum schedule and EMA, byol mode, ablation knobs."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from care_ssl import CARE, momentum_at
from care_ssl.losses import attention_loss, byol_loss, symmetric_byol_loss

# timm's resnet18 at 32 px (C4 2x2, C5 1x1) with thin heads and a 2-block T-stream: the gradient and
# momentum logic does not depend on widths, and this keeps each step in the tens of milliseconds.
SMALL = {"img_size": 32, "hidden_dim": 64, "proj_dim": 32, "depth": 2, "dim_head": 16}


@functools.cache
def small_care(mode: str = "care", design: str = "parallel") -> CARE:
    torch.manual_seed(0)
    return CARE("resnet18", mode=mode, design=design, **SMALL)


def views(n: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g)


def unit(angle: float, dim: int = 256) -> torch.Tensor:
    """The unit vector at ``angle`` from e_0 in the (e_0, e_1) plane, as a (1, dim) batch."""
    v = torch.zeros(1, dim)
    v[0, 0], v[0, 1] = math.cos(angle), math.sin(angle)
    return v


# --- losses on constructed unit vectors ---------------------------------------------------------------


@pytest.mark.parametrize("angle", [0.0, math.pi / 3, math.pi / 2, math.pi])
def test_byol_loss_is_two_minus_two_cos(angle: float) -> None:
    assert byol_loss(unit(0.0), unit(angle)).item() == pytest.approx(2 - 2 * math.cos(angle), abs=1e-6)


def test_byol_loss_ignores_vector_length() -> None:
    assert byol_loss(3 * unit(0.0), 0.5 * unit(math.pi / 3)).item() == pytest.approx(1.0, abs=1e-6)


def test_symmetric_loss_sums_both_pairings() -> None:
    # (view-1 prediction vs view-2 target at 60 deg) + (view-2 prediction vs view-1 target at 90 deg)
    loss = symmetric_byol_loss(unit(0.0), unit(math.pi / 3), unit(0.0), unit(math.pi / 2))
    assert loss.item() == pytest.approx((2 - 1) + (2 - 0), abs=1e-6)


def test_attention_loss_is_mse_over_batch_and_256_elements() -> None:
    # orthogonal unit vectors differ by 1 in two of 256 elements: MSE = 2 / 256 per view
    c, t = unit(0.0), unit(math.pi / 2)
    assert attention_loss(c, t, c, t).item() == pytest.approx(2 * 2 / 256, abs=1e-7)
    # identical for view 2: only view 1 counts; a batch of two equal rows has the same mean
    assert attention_loss(c.repeat(2, 1), t.repeat(2, 1), c, c).item() == pytest.approx(2 / 256, abs=1e-7)


def test_forward_combines_the_losses_with_lambda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eq. 5 on stubbed stream outputs: total = L_c + L_t + lambda L_att, with lambda = 100 by default."""
    model = CARE("resnet18", **SMALL)
    assert model.lam == 100.0
    x1, x2 = views(1, 32)[0].repeat(2, 1, 1, 1), views(1, 32)[1].repeat(2, 1, 1, 1)
    a = math.pi / 3
    # online (C, T) and target (C, T) outputs per view, as unit vectors at known angles
    online = {id(x1): (unit(0.0), unit(a)), id(x2): (unit(0.0), unit(0.0))}
    target = {id(x1): (unit(math.pi / 2), unit(0.0)), id(x2): (unit(a), unit(a))}
    monkeypatch.setattr(model, "_online", lambda x: online[id(x)])
    monkeypatch.setattr(model, "_target", lambda x: target[id(x)])
    out = model(x1, x2)
    l_c = (2 - 2 * math.cos(a)) + (2 - 2 * math.cos(math.pi / 2))  # c1 vs z2, c2 vs z1
    l_t = (2 - 2 * math.cos(a - a)) + (2 - 2 * math.cos(0.0))  # t1 vs zt2, t2 vs zt1
    l_att = ((1 - math.cos(a)) ** 2 + math.sin(a) ** 2) / 256 + 0.0  # |c1 - t1|^2 / 256, c2 == t2
    assert out.c.item() == pytest.approx(l_c, abs=1e-6)
    assert out.t.item() == pytest.approx(l_t, abs=1e-6)
    assert out.att.item() == pytest.approx(l_att, abs=1e-7)
    assert out.total.item() == pytest.approx(l_c + l_t + 100 * l_att, abs=1e-5)


def test_lambda_knob_scales_only_the_attention_term() -> None:
    m = small_care()
    x1, x2 = views()
    out = {}
    for lam in (0.0, 250.0):
        m.lam = lam
        torch.manual_seed(0)
        with torch.no_grad():
            out[lam] = m(x1, x2)
    m.lam = 100.0
    la, lb = out[0.0], out[250.0]
    assert torch.allclose(la.c, lb.c) and torch.allclose(la.att, lb.att)
    assert la.total.item() == pytest.approx((la.c + la.t).item(), rel=1e-6)
    assert lb.total.item() == pytest.approx((lb.c + lb.t + 250 * lb.att).item(), rel=1e-6)


# --- gradient paths -------------------------------------------------------------------------------------


def reached(model: CARE, loss: torch.Tensor) -> set[str]:
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {n for n, p in model.named_parameters() if p.grad is not None}


def owners(model: CARE, *prefixes: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(prefixes)}


@functools.cache
def paths(design: str) -> dict[str, set[str]]:
    model = small_care(design=design)
    model.train()
    out = model(*views())
    return {k: reached(model, getattr(out, k)) for k in ("c", "t", "att", "total")}


STAGE5 = "backbone.model.layer4."
UP_TO_C4 = tuple(f"backbone.model.{m}" for m in ("conv1.", "bn1.", "layer1.", "layer2.", "layer3."))


def test_l_c_trains_backbone_and_c_heads_only() -> None:
    m = small_care()
    assert paths("parallel")["c"] == owners(m, "backbone.", "c_projector.", "c_predictor.")


def test_l_t_trains_transformer_t_heads_and_backbone_up_to_c4() -> None:
    m = small_care()
    expected = owners(m, "transformer.", "t_projector.", "t_predictor.", *UP_TO_C4)
    assert paths("parallel")["t"] == expected
    assert not owners(m, STAGE5) & paths("parallel")["t"]  # the T-stream runs beside stage 5


def test_l_att_trains_backbone_and_c_heads_not_the_t_stream() -> None:
    m = small_care()
    assert paths("parallel")["att"] == owners(m, "backbone.", "c_projector.", "c_predictor.")


def test_target_network_gets_no_gradient() -> None:
    m = small_care()
    got = paths("parallel")["total"]
    assert not owners(m, "target.") & got
    assert all(not p.requires_grad and p.grad is None for p in m.target.parameters())
    assert got == {n for n, p in m.named_parameters() if not n.startswith("target.")}


def test_sequential_design_sends_l_t_through_stage_5() -> None:
    m = small_care(design="sequential")
    assert owners(m, STAGE5) <= paths("sequential")["t"]
    assert m.transformer.size == tuple(m.backbone.c5_shape[1:])


def test_byol_mode_has_no_t_stream() -> None:
    m = small_care(mode="byol")
    t_stream = ("transformer", "t_p", "target.transformer")
    assert not any(n.startswith(t_stream) for n, _ in m.named_parameters())
    out = m(*views())
    assert out.t.item() == 0.0 and out.att.item() == 0.0
    assert torch.equal(out.total, out.c)
    assert reached(m, out.total) == owners(m, "backbone.", "c_projector.", "c_predictor.")


# --- momentum ------------------------------------------------------------------------------------------


def test_momentum_schedule_endpoints() -> None:
    assert momentum_at(0, 1000) == pytest.approx(0.99)
    assert momentum_at(500, 1000) == pytest.approx(0.995)
    assert momentum_at(1000, 1000) == pytest.approx(1.0)
    taus = [momentum_at(s, 100) for s in range(101)]
    assert all(b >= a for a, b in itertools.pairwise(taus))
    with pytest.raises(ValueError, match="step"):
        momentum_at(101, 100)


def test_target_starts_as_a_hard_copy_and_trains_in_batch_statistics_mode() -> None:
    torch.manual_seed(0)
    m = CARE("resnet18", **SMALL)
    online = dict(m.named_parameters())
    for name, p in m.target.named_parameters():
        assert torch.equal(p, online[name]), name
    m.eval()
    assert not m.backbone.training and all(mod.training for mod in m.target.modules())


def test_ema_update_covers_backbone_transformer_projectors_only() -> None:
    torch.manual_seed(0)
    m = CARE("resnet18", **SMALL)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    before = {n: p.clone() for n, p in m.target.named_parameters()}
    buffers = {n: b.clone() for n, b in m.target.named_buffers()}
    tau = m.update_momentum(25, 100)
    assert tau == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)
    online = dict(m.named_parameters())
    averaged = ("backbone.", "transformer.", "c_proj", "t_proj")
    assert set(before) == {n for n in online if n.startswith(averaged)}
    for name, p in m.target.named_parameters():
        torch.testing.assert_close(p, tau * before[name] + (1 - tau) * online[name])
    for name, b in m.target.named_buffers():
        assert torch.equal(b, buffers[name]), name  # BN statistics are not averaged
    m.update_momentum(100, 100)  # tau = 1 leaves the target as it is
    for name, p in m.target.named_parameters():
        torch.testing.assert_close(p, tau * before[name] + (1 - tau) * online[name])


def test_online_parameters_are_what_sgd_trains() -> None:
    m = small_care()
    names = {n for n, p in m.named_parameters() if any(p is q for q in m.online_parameters())}
    expected = owners(m, "backbone.", "transformer.", "c_projector.", "c_predictor.", "t_projector.")
    assert names == expected | owners(m, "t_predictor.")


def test_predictions_are_unit_vectors() -> None:
    m = small_care()
    c, t = m._online(views()[0])
    assert t is not None
    torch.testing.assert_close(c.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(4))
    z, zt = m._target(views()[0])
    assert zt is not None and not z.requires_grad
    torch.testing.assert_close(F.normalize(z, dim=-1), z)
