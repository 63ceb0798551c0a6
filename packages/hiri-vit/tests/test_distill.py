"""EMA distillation (paper Section 4.5): targets against hand computations, the teacher's isolation."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import timm
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from hiri_vit.distill import (
    EMADistiller,
    MaskedMixup,
    distill_target,
    mixed_teacher_target,
    per_location_logits,
)

K, IMG, B = 5, 96, 4  # resnet10t has stride 32: a 3x3 map at 96


@functools.cache
def _resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet10t", num_classes=K).eval()


def _images(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, IMG, IMG, generator=g), torch.tensor([0, 3, 1, 4])


def _hand_probs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The fc layer applied at each location of the last map, softmax over classes: (B, K, 3, 3)."""
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = torch.einsum("bchw,kc->bkhw", feats, model.fc.weight) + model.fc.bias.view(1, -1, 1, 1)
    return logits.softmax(dim=1)


def _hand_label(y: torch.Tensor, lam: float, smoothing: float) -> torch.Tensor:
    off, on = smoothing / K, 1 - smoothing + smoothing / K
    one_hot = torch.full((B, K), off)
    one_hot[torch.arange(B), y] = on
    return lam * one_hot + (1 - lam) * one_hot.flip(0)


def test_per_location_logits_of_a_cnn_are_the_head_at_every_location() -> None:
    model = _resnet()
    x, _ = _images()
    with torch.no_grad():
        dense = per_location_logits(model, x)
        assert dense.shape == (B, K, 3, 3)
        assert torch.allclose(dense.softmax(1), _hand_probs(model, x), atol=1e-5)
        # a linear head commutes with the average pool it replaces
        assert torch.allclose(dense.mean(dim=(2, 3)), model(x), atol=1e-4)


def test_per_location_logits_of_a_vit_follow_the_patch_grid() -> None:
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", num_classes=K, img_size=(64, 48)).eval()
    x = torch.randn(2, 3, 64, 48)
    grid = (64 // 16, 48 // 16)  # test_vit: 16-pixel patches, one class token
    with torch.no_grad():
        dense = per_location_logits(vit, x)
        assert dense.shape == (2, K, *grid)
        tokens = vit.forward_features(x)[:, vit.num_prefix_tokens :]
        top_right = vit.head(vit.fc_norm(tokens[:, grid[1] - 1]))  # row 0, last column
        assert torch.allclose(dense[:, :, 0, -1], top_right, atol=1e-5)


def test_unsupported_feature_layout_is_a_clear_error() -> None:
    class Odd(torch.nn.Module):
        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)

    with pytest.raises(ValueError, match="forward_head_dense"):
        per_location_logits(Odd(), torch.randn(2, 3, 8, 8))


def test_masked_mixup_is_timms_mixup_plus_the_mask() -> None:
    x, y = _images()
    for kwargs in ({"mixup_alpha": 0.0, "cutmix_alpha": 1.0}, {"mixup_alpha": 0.8, "cutmix_alpha": 0.0}):
        np.random.seed(3)
        ref_x, ref_y = Mixup(label_smoothing=0.1, num_classes=K, **kwargs)(x.clone(), y)
        np.random.seed(3)
        batch = MaskedMixup(label_smoothing=0.1, num_classes=K, **kwargs).mix(x, y)
        assert torch.allclose(batch.x, ref_x) and torch.allclose(batch.target, ref_y)
    assert torch.equal(x, _images()[0])  # the originals are untouched (the teacher needs them)
    with pytest.raises(ValueError, match="batch"):
        MaskedMixup(mode="elem")


def test_cutmix_target_equals_hand_computation() -> None:
    model = _resnet()
    x, y = _images()
    np.random.seed(0)
    mixup = MaskedMixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=K)
    batch = mixup.mix(x, y)
    assert batch.kind == "cutmix" and batch.box is not None
    y0, y1, x0, x1 = batch.box
    # Eq. 4: the box shows x_b (the flipped batch), the rest x_a; lambda is the x_a share of the area
    expect_x = x.clone()
    expect_x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
    assert torch.equal(batch.x, expect_x)
    lam = 1 - (y1 - y0) * (x1 - x0) / IMG**2
    assert batch.lam == pytest.approx(lam)
    assert 0 < lam < 1  # the seed gives a real box, not a degenerate one
    y_mix = _hand_label(y, lam, 0.1)
    assert torch.allclose(batch.target, y_mix)
    # Eq. 5: M at the 3x3 map is the x_a share of each 32x32 cell
    m_full = torch.ones(IMG, IMG)
    m_full[y0:y1, x0:x1] = 0
    m_map = m_full.reshape(3, 32, 3, 32).mean(dim=(1, 3))
    p_a = _hand_probs(model, x)
    p_b = p_a.flip(0)
    y_hat = (m_map * p_a + (1 - m_map) * p_b).mean(dim=(2, 3))
    alpha = 0.3
    distiller = EMADistiller(model, alpha=alpha)
    got = distiller.target(x, batch)
    assert torch.allclose(got, alpha * y_mix + (1 - alpha) * y_hat, atol=1e-5)
    assert torch.allclose(got.sum(1), torch.ones(B), atol=1e-5)
    # explicit x_b gives the same as the flipped-batch shortcut
    assert torch.allclose(distiller.target(x, batch, x_b=x.flip(0)), got, atol=1e-5)


def test_mixup_target_equals_hand_computation() -> None:
    model = _resnet()
    x, y = _images(2)
    np.random.seed(1)
    batch = MaskedMixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=K).mix(x, y)
    lam = batch.lam
    assert batch.kind == "mixup" and 0 < lam < 1
    assert torch.allclose(batch.x, lam * x + (1 - lam) * x.flip(0))
    p = _hand_probs(model, x).mean(dim=(2, 3))
    y_hat = lam * p + (1 - lam) * p.flip(0)  # M is the constant lambda
    y_mix = _hand_label(y, lam, 0.0)
    got = EMADistiller(model, alpha=0.5).target(x, batch)
    assert torch.allclose(got, 0.5 * y_mix + 0.5 * y_hat, atol=1e-5)


def test_functional_pieces() -> None:
    p_a = torch.rand(2, 3, 2, 2).softmax(1)
    p_b = torch.rand(2, 3, 2, 2).softmax(1)
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    expect = (p_a[..., 0, 0] + p_b[..., 0, 1] + p_b[..., 1, 0] + p_b[..., 1, 1]) / 4
    assert torch.allclose(mixed_teacher_target(p_a, p_b, mask), expect)
    lam_target = mixed_teacher_target(p_a, p_b, torch.tensor(0.25))
    assert torch.allclose(lam_target, (p_a + 3 * p_b).mean((2, 3)) / 4)
    with pytest.raises(ValueError, match="alpha"):
        distill_target(p_a[..., 0, 0], p_b[..., 0, 0], 1.5)


def test_teacher_is_never_updated_by_gradients() -> None:
    torch.manual_seed(0)
    student = timm.create_model("resnet10t", num_classes=K)
    distiller = EMADistiller(student, decay=0.9)
    teacher = distiller.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    x, y = _images()
    np.random.seed(0)
    batch = MaskedMixup(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=K).mix(x[:, :, :64, :64], y)
    target = distiller.target(x[:, :, :64, :64], batch)
    assert not target.requires_grad
    loss = SoftTargetCrossEntropy()(student(batch.x), target)
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    opt.step()
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())  # the step left it alone
    assert not teacher.training
    distiller.update(student)
    w_t, w_s = teacher.fc.weight, student.fc.weight
    assert torch.allclose(w_t, 0.9 * before["fc.weight"] + 0.1 * w_s.detach(), atol=1e-6)
    assert not torch.equal(w_t, before["fc.weight"])


def test_per_location_logits_of_hiri_vit_use_its_dense_head() -> None:
    """hiri_vit_*: the spec's teacher maps are the head's LN + fc at every stage-5 position."""
    import hiri_vit  # noqa: F401  (registers the models)

    torch.manual_seed(0)
    model = timm.create_model("hiri_vit_s", num_classes=5, head_type="avg").eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        dense = per_location_logits(model, x)
        assert dense.shape == (2, 5, 2, 2)
        torch.testing.assert_close(dense, model.forward_dense_logits(x))
        # LN and fc per location, then the average, is the avg-pool head's logit (linear after the LN)
        feats = model.forward_features(x)
        head = model.head
        tokens = feats.flatten(2).transpose(1, 2)
        manual = head.fc(head.norm(tokens)).transpose(1, 2).reshape(2, 5, 2, 2)
    torch.testing.assert_close(dense, manual)
