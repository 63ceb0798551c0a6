"""Official CoTNet checkpoints through timm's own ``pretrained=True``: a local file, a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import os
import sys
import threading
import types
from pathlib import Path

import pytest
import timm
import torch

import cot  # noqa: F401  (registers the models and their tags)
from ctxnets_shared.weights import UnsafeCheckpointError
from ctxnets_shared.weights.errors import WeightsNotDownloadableError

# the official README's "Results on ImageNet" table: one released checkpoint per row (SE-CoTNetD-152 twice)
OFFICIAL_TAGS = {
    "cotnet50.official_in1k",
    "cotnext50_2x48d.official_in1k",
    "se_cotnetd_50.official_in1k",
    "cotnet101.official_in1k",
    "cotnext101_2x48d.official_in1k",
    "se_cotnetd_101.official_in1k",
    "se_cotnetd_152.official_in1k",
    "se_cotnetd_152.official_in1k_320",
}


class _CfgNode(dict):
    """What the official trainer pickles as ``args``: a yacs CfgNode (a dict subclass)."""


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A cotnet50 checkpoint as the official trainer saves it, random weights under the official keys."""
    torch.manual_seed(0)
    model = timm.create_model("cotnet50")
    # the init perturbed (zero-init BNs included), so every weight is distinct and the logits stay finite
    state = {
        k: v + (0.1 * torch.rand_like(v) if k.endswith("running_var") else 0.02 * torch.randn_like(v))
        if v.is_floating_point()
        else v
        for k, v in model.state_dict().items()
    }
    yacs, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")
    _CfgNode.__module__, _CfgNode.__qualname__ = "yacs.config", "CfgNode"
    config.CfgNode = _CfgNode  # type: ignore[attr-defined]
    sys.modules.update({"yacs": yacs, "yacs.config": config})
    try:
        ckpt = {
            "epoch": 349,
            "arch": "cotnet50",
            "state_dict": {f"module.{k}": v for k, v in state.items()},
            "optimizer": torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1).state_dict(),
            "version": 2,
            "args": _CfgNode(model=_CfgNode(name="cotnet50"), solver=_CfgNode(lr=0.1)),
            "state_dict_ema": {
                f"module.{k}": v + 1 if v.is_floating_point() else v for k, v in state.items()
            },
            "metric": 81.3,
        }
        path = tmp_path_factory.mktemp("official") / "cotnet50.pth.tar"
        torch.save(ckpt, path)
    finally:
        sys.modules.pop("yacs.config")
        sys.modules.pop("yacs")
    return path, state


def test_every_official_checkpoint_is_a_pretrained_tag():
    assert set(timm.list_models(["cot*", "se_cot*"], pretrained=True)) == OFFICIAL_TAGS
    assert timm.get_pretrained_cfg("cotnet50").tag == "official_in1k"  # the default of the bare name
    cfg = timm.get_pretrained_cfg("se_cotnetd_152.official_in1k_320")
    assert cfg.input_size == (3, 320, 320) and cfg.paper_top1 == 84.6
    for name in OFFICIAL_TAGS:
        cfg = timm.get_pretrained_cfg(name)
        assert cfg.weights_page.startswith("https://drive.google.com/file/d/")
        assert not cfg.url and not cfg.hf_hub_id  # Drive pages are not direct downloads


def test_official_file_loads_as_published(official):
    path, state = official
    model = timm.create_model(
        "cotnet50.official_in1k", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
    ).eval()
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())  # 'state_dict', not the EMA copy
    assert "state_dict" not in model.pretrained_cfg and model.pretrained_cfg["file"] == str(path)
    ref = timm.create_model("cotnet50").eval()
    ref.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        assert out.isfinite().all() and torch.equal(out, ref(x))


def test_official_file_with_nan_weights_warns(official, tmp_path):
    _, state = official
    bad = {**state, "fc.bias": torch.full_like(state["fc.bias"], float("nan"))}
    torch.save({"state_dict": bad}, tmp_path / "nan.pth")
    with pytest.warns(UserWarning, match=r"1 tensor\(s\) hold NaN or Inf values: fc.bias"):
        timm.create_model(
            "cotnet50.official_in1k",
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(tmp_path / "nan.pth")),
        )


def test_official_file_adapts_to_a_new_head_and_grey_input(official):
    path, state = official
    model = timm.create_model(
        "cotnet50.official_in1k",
        pretrained=True,
        num_classes=10,
        in_chans=1,
        pretrained_cfg_overlay=dict(file=str(path)),
    )
    assert model.fc.weight.shape == (10, 2048) and model.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.allclose(model.conv1.weight[:, 0], state["conv1.weight"].sum(1))
    assert torch.equal(model.layer4[2].conv2.embed[3].weight, state["layer4.2.conv2.embed.3.weight"])


def test_direct_url_downloads_through_timm(official, tmp_path):
    path, state = official
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
        model = timm.create_model(
            "cotnet50.official_in1k",
            pretrained=True,
            pretrained_cfg_overlay=dict(url=url),
            cache_dir=tmp_path / "cache",
        )
    finally:
        server.shutdown()
        thread.join()
    assert (tmp_path / "cache" / path.name).is_file()  # timm's download cache
    assert torch.equal(model.fc.weight, state["fc.weight"])


def test_without_a_file_the_error_says_where_to_get_it():
    with pytest.raises(WeightsNotDownloadableError) as err:
        timm.create_model("cotnet50", pretrained=True)
    msg = str(err.value)
    assert "https://drive.google.com/file/d/1SR5ezIu7LN943zHaUh4mC0ehxBVMqtfv" in msg
    assert "pretrained_cfg_overlay=dict(file=" in msg


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    path = Path(tmp_path) / "evil.pth.tar"
    torch.save({"state_dict": {}, "args": _RunsCode()}, path)
    with pytest.raises(UnsafeCheckpointError):
        timm.create_model(
            "cotnet50.official_in1k", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
        )
