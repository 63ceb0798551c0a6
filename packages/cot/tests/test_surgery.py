"""replace_conv3x3: CoT layers into another ResNet-style network."""

from __future__ import annotations

import pytest
import timm
import torch

from cot import CotLayer, CoXtLayer, replace_conv3x3


def test_replaces_every_bottleneck_3x3_of_resnet50():
    model = timm.create_model("resnet50", num_classes=10)
    before = sum(p.numel() for p in model.parameters())
    names = replace_conv3x3(model)
    # 16 bottlenecks, one 3x3 conv each (the stem's 7x7 and the 1x1 convs stay)
    assert names == [f"layer{s}.{b}.conv2" for s, n in zip(range(1, 5), (3, 4, 6, 3)) for b in range(n)]
    assert isinstance(model.layer1[0].conv2, CotLayer)
    strided = model.layer2[0].conv2  # stride 2 -> average pool before the CoT layer, as CoTNet does
    assert isinstance(strided[0], torch.nn.AvgPool2d) and isinstance(strided[1], CotLayer)
    assert sum(p.numel() for p in model.parameters()) < before
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)
    out.sum().backward()


def test_filter_and_layer_class():
    model = timm.create_model("resnet50", num_classes=0)
    names = replace_conv3x3(
        model, layer_cls=CoXtLayer, filter_fn=lambda name, conv: name.startswith("layer4")
    )
    assert names == ["layer4.0.conv2", "layer4.1.conv2", "layer4.2.conv2"]
    assert isinstance(model.layer4[1].conv2, CoXtLayer)
    assert isinstance(model.layer3[0].conv2, torch.nn.Conv2d)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2048)


def test_grouped_and_depthwise_convs_stay():
    # ResNeXt's grouped 3x3 and depthwise 3x3 convs keep their grouping: a CoT layer would mix channels
    model = torch.nn.Sequential(
        torch.nn.Conv2d(64, 64, 3, padding=1, groups=32, bias=False),  # ResNeXt-style grouped
        torch.nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False),  # depthwise
        torch.nn.Conv2d(64, 64, 3, padding=1, bias=False),  # dense: replaced
    )
    assert replace_conv3x3(model) == ["2"]
    assert model[0].groups == 32 and model[1].groups == 64 and isinstance(model[2], CotLayer)


def test_dilated_conv_becomes_dilated_cot_layer():
    model = timm.create_model("resnet50", num_classes=0, output_stride=16)
    names = replace_conv3x3(model, filter_fn=lambda name, conv: name.startswith("layer4"))
    assert names == ["layer4.0.conv2", "layer4.1.conv2", "layer4.2.conv2"]
    # the first block keeps the previous dilation (timm's first_dilation), the others dilate by 2
    assert [model.layer4[i].conv2.dilation for i in range(3)] == [1, 2, 2]
    with torch.no_grad():
        assert model.eval().forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 2048, 4, 4)


def test_a_model_without_an_eligible_conv_is_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 7), torch.nn.Conv2d(64, 64, 3, groups=64))
    with pytest.raises(ValueError, match="Sequential has no eligible 3x3 convolution: one needs kernel 3x3"):
        replace_conv3x3(model)
    # ResNet-18: both 3x3 convs of layer1's two blocks, and in layers 2-4 all but the first (64->128, ...)
    resnet = timm.create_model("resnet18")
    with pytest.raises(ValueError, match="filter_fn kept none of the 13 eligible 3x3 convolutions"):
        replace_conv3x3(resnet, filter_fn=lambda name, conv: name.startswith("head"))
