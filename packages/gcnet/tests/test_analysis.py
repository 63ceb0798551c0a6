"""Section 3 analysis: distances on constructed inputs, probes on real photographs, figure, command."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import timm
import torch
from sklearn.datasets import load_sample_images

from gcnet import GlobalContextBlock, NonLocalBlock
from gcnet.analysis import (
    AttentionProbe,
    MultiHeadSelfAttention2d,
    attention_modules,
    average_cosine_distance,
    capture_attention,
    plot_attention,
)
from gcnet.cli import main

SIZE = 96


def test_identical_vectors_have_distance_zero():
    maps = torch.rand(7).expand(5, 7)  # the same attention map for 5 queries
    assert average_cosine_distance(maps).item() == pytest.approx(0.0, abs=1e-6)
    assert average_cosine_distance(maps * torch.arange(1, 6.0)[:, None]).item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_constructed_distances():
    n = 4
    assert average_cosine_distance(torch.eye(n)).item() == pytest.approx((n - 1) / (2 * n))  # orthogonal
    v = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])  # opposite: dist 1 off the diagonal
    assert average_cosine_distance(v).item() == pytest.approx(0.5)
    with_zero = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # the zero vector has no direction
    assert average_cosine_distance(with_zero).item() == pytest.approx(0.25)
    assert math.isnan(average_cosine_distance(torch.zeros(3, 2)).item())
    batched = average_cosine_distance(torch.stack([torch.eye(2), torch.ones(2, 2)]))
    torch.testing.assert_close(batched, torch.tensor([0.25, 0.0]))
    with pytest.raises(ValueError, match="N, D >= 1"):
        average_cosine_distance(torch.zeros(0, 3))


def test_query_independent_blocks_give_zero_att_distance():
    block = GlobalContextBlock(16)
    with torch.no_grad():
        block.channel_add_conv[3].weight.normal_()
    (record,) = capture_attention(torch.nn.Sequential(block), torch.randn(2, 16, 5, 5)).values()
    d = record.distances()
    assert d["att"] == pytest.approx(0.0, abs=1e-6) and d["input"] > 0.1
    assert record.maps([(0.1, 0.1), (0.9, 0.9)]).shape == (2, 2, 5, 5)


def test_non_local_record_matches_block():
    block = NonLocalBlock(8).eval()
    x = torch.randn(1, 8, 4, 6)
    (record,) = capture_attention(torch.nn.Sequential(block), x).values()
    torch.testing.assert_close(record.attention, block.attention_map(x))
    torch.testing.assert_close(record.output, block(x) - x)
    # query (y, x) = (0.5, 0.5) on a 4 x 6 map is position (2, 3) -> flat index 15
    torch.testing.assert_close(record.maps([(0.5, 0.5)])[0, 0].flatten(), block.attention_map(x)[0, 15])


def test_mhsa_module_is_probed():
    model = torch.nn.Sequential(MultiHeadSelfAttention2d(16, num_heads=2, sr_ratio=2))
    (record,) = capture_attention(model, torch.randn(1, 16, 8, 8)).values()
    assert record.attention.shape == (1, 64, 16) and record.key_size == (4, 4)
    torch.testing.assert_close(record.attention.sum(-1), torch.ones(1, 64))


@functools.cache
def _photos() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's two sample photographs at SIZE x SIZE: (display RGB in [0, 1], normalised batch)."""
    imgs = torch.from_numpy(np.stack(load_sample_images().images)).permute(0, 3, 1, 2).float() / 255
    imgs = torch.nn.functional.interpolate(imgs, size=(SIZE, SIZE), mode="bilinear", antialias=True)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return imgs, (imgs - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def test_probes_on_photographs_and_png(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("nl_resnet50").eval()
    with torch.no_grad():  # a "trained" NL block: non-zero output (the BN scale starts at zero)
        model.layer3[4].context_block.norm.weight.fill_(1.0)
    display, batch = _photos()
    records = capture_attention(model, batch)
    assert list(records) == ["layer3.4.context_block"]
    record = records["layer3.4.context_block"]
    assert record.attention.shape == (2, 36, 36)  # c4 of a 96 x 96 input: 6 x 6 positions
    for d in [record.distances()]:
        assert all(0.0 <= v <= 1.0 for v in d.values()) and d["input"] > 0
    png = plot_attention(display[0].permute(1, 2, 0), records, tmp_path / "fig.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(tmp_path.iterdir()) == [png]  # nothing half-written beside it


def test_probe_errors():
    with pytest.raises(ValueError, match="no attention blocks"):
        AttentionProbe(torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="not attention modules"):
        AttentionProbe(torch.nn.Sequential(GlobalContextBlock(16)), names=["7"])
    gc = timm.create_model("gc_resnet50", attn_stages=(3,))
    assert list(attention_modules(gc)) == [f"layer4.{i}.context_block" for i in range(3)]


def _strict_json(text):
    def no_constant(name):  # NaN / Infinity are not JSON
        raise ValueError(f"invalid JSON constant {name}")

    return json.loads(text, parse_constant=no_constant)


def test_strict_json_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        _strict_json('{"x": NaN}')


def test_command_on_default_photographs(tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    figures = []
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), savefig(fig, *a, **k)))
    assert main(["analyze", "snl_resnet50", "--out", str(tmp_path), "--img-size", "64"]) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["attention_china.png", "attention_flower.png", "distances.json"]
    report = _strict_json((tmp_path / "distances.json").read_text())
    assert report["weights"] == "random weights"
    d = report["distances"]["china"]["layer3.4.context_block"]
    assert d["att"] == pytest.approx(0.0, abs=1e-6)  # SNL: one map for every query
    assert d["output"] is None  # W_v starts at zero: the output has no direction, NaN in Python, null here
    captured = capsys.readouterr()
    assert "layer3.4.context_block" in captured.out
    warnings = [line for line in captured.err.splitlines() if line]
    assert len(warnings) == 1 and warnings[0].startswith("gcnet: warning: snl_resnet50 has random weights")
    # one figure per image, named in its title, with one colour bar per block row (1 SNL block, 5 queries)
    assert [f.get_suptitle() for f in figures] == [
        f"image: {name}    model: snl_resnet50 (random weights)" for name in ("china", "flower")
    ]
    for fig in figures:
        bars = [ax for ax in fig.axes if ax.get_ylabel() == "attention weight"]
        assert len(fig.axes) == 5 + 1 and len(bars) == 1


def test_command_with_an_official_format_checkpoint(tmp_path, capsys):
    model = timm.create_model("snl_resnet50")
    with torch.no_grad():  # trained-looking: W_v no longer zero, so the output distance is defined
        model.layer3[4].context_block.channel_add_conv[0].weight.normal_(0.0, 0.01)
    ckpt = tmp_path / "snl.pth.tar"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    out = tmp_path / "out"
    argv = ["analyze", "snl_resnet50", "--checkpoint", str(ckpt), "--out", str(out), "--img-size", "64"]
    assert main(argv) == 0
    assert capsys.readouterr().err == ""  # no random-weights warning
    report = _strict_json((out / "distances.json").read_text())
    assert report["weights"] == "snl.pth.tar"
    assert 0.0 < report["distances"]["flower"]["layer3.4.context_block"]["output"] < 1.0
    # an mmdetection detector checkpoint as published: backbone keys only, plus the neck and heads
    mmdet = {f"backbone.{k}": v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    torch.save(
        {"meta": {}, "state_dict": {**mmdet, "neck.lateral_convs.0.conv.weight": torch.zeros(1)}}, ckpt
    )
    assert main(argv) == 0
    assert _strict_json((out / "distances.json").read_text())["distances"]["china"]


def test_command_own_image_and_errors(tmp_path, capsys):
    from PIL import Image

    display, _ = _photos()
    img = tmp_path / "photo.png"
    Image.fromarray((display[1].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(img)
    out = tmp_path / "out"
    assert main(["analyze", "gc_resnet50", "--image", str(img), "--out", str(out), "--img-size", "64"]) == 0
    assert (out / "attention_photo.png").is_file()
    capsys.readouterr()
    for argv, message in [
        (["analyze", "gc_resnet50", "--image", str(tmp_path / "missing.jpg")], "image not found"),
        (["analyze", "no_such_model"], "unknown model 'no_such_model'"),
        (["analyze", "resnet18"], "has no attention blocks the analysis supports (GlobalContextBlock"),
        (["analyze", "gc_resnet50", "--checkpoint", str(tmp_path / "none.pth")], "cannot load --checkpoint"),
    ]:
        assert main([*argv, "--out", str(tmp_path / "x"), "--img-size", "64"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("gcnet: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
