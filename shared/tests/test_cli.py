"""The ctxnets command: user mistakes give one clear line and a non-zero status; zoo measures and writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet

from ctxnets_shared import packages
from ctxnets_shared.cli import main
from ctxnets_shared.models import paper_cfg
from ctxnets_shared.packages import CtxnetsPackage
from ctxnets_shared.zoo import run_zoo, write_outputs

# Published numbers of He et al.'s ResNet-18 (11,689,512 parameters, 1.8 GMACs at 224) stand in for a
# paper's table (timm reads the module-level `default_cfgs`); the "wrong" twin claims numbers the
# architecture cannot have, so its row must fail.
default_cfgs = generate_default_cfgs(
    {
        "zootest_resnet18": paper_cfg(
            paper_params=11_689_512, paper_gflops=1.8, paper_top1=69.8, paper_name="ResNet",
            paper_ids="arXiv:1512.03385", origin_url="https://github.com/KaimingHe/deep-residual-networks",
            first_conv="conv1", classifier="fc",
        ),
        "zootest_wrong": paper_cfg(
            paper_params=11_000_000, paper_gflops=3.0, paper_top1=70.0, paper_name="none",
            paper_ids="none", origin_url="none", first_conv="conv1", classifier="fc",
        ),
    }
)  # fmt: skip


def _resnet18(variant: str, **kwargs: object) -> ResNet:
    return build_model_with_cfg(ResNet, variant, False, block=BasicBlock, layers=(2, 2, 2, 2), **kwargs)


@register_model
def zootest_resnet18(pretrained: bool = False, **kwargs: object) -> ResNet:
    return _resnet18("zootest_resnet18", **kwargs)


@register_model
def zootest_wrong(pretrained: bool = False, **kwargs: object) -> ResNet:
    return _resnet18("zootest_wrong", **kwargs)


@pytest.fixture
def zoo_package(monkeypatch: pytest.MonkeyPatch) -> CtxnetsPackage:
    pkg = CtxnetsPackage(
        distribution="zootest",
        import_name="tests",
        paper="ResNet",
        models=("zootest_resnet18", "zootest_wrong"),
    )
    monkeypatch.setattr(packages, "_CACHE", {"zootest": pkg})
    return pkg


def test_paper_numbers_reach_pretrained_cfg() -> None:
    m = timm.create_model("zootest_resnet18")
    assert m.pretrained_cfg["paper_params"] == 11_689_512
    assert m.pretrained_cfg["paper_gflops"] == 1.8
    assert m.pretrained_cfg["paper_name"] == "ResNet"


def test_zoo_rows_pass_and_fail(zoo_package: CtxnetsPackage, tmp_path: Path) -> None:
    rows = run_zoo({"zootest": zoo_package})
    good, bad = rows
    assert (good.params, good.params_ok, good.gflops_ok, good.passed) == (11_689_512, True, True, True)
    assert good.img_per_s > 0 and good.img_size == 224
    assert (bad.params_ok, bad.gflops_ok, bad.passed) == (False, False, False)
    written = write_outputs(rows, tmp_path / "zoo", "test machine")
    assert [p.name for p in written] == ["zoo.md", "zoo.json", "zoo.png"]
    data = json.loads((tmp_path / "zoo" / "zoo.json").read_text())
    assert [r["passed"] for r in data["rows"]] == [True, False]
    assert (
        "| zootest_resnet18 | zootest | 224 | 11,689,512 | 11,689,512 |"
        in (tmp_path / "zoo" / "zoo.md").read_text()
    )
    assert (tmp_path / "zoo" / "zoo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_zoo_command_exit_status(zoo_package: CtxnetsPackage, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo", "--models", "zootest_resnet18"]) == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out
    assert main(["zoo", "--models", "zootest_wrong"]) == 1
    assert main(["zoo", "--models", "resnet50"]) == 2
    assert "not an installed ctxnets model" in capsys.readouterr().err


def test_zoo_with_no_models_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(packages, "_CACHE", {})
    assert main(["zoo"]) == 0
    assert "no ctxnets models installed yet" in capsys.readouterr().out
    assert main(["list"]) == 0
    assert "no ctxnets packages are installed" in capsys.readouterr().out


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    return err[0]


def test_user_mistakes(
    zoo_package: CtxnetsPackage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", "no_such_model"]) == 2
    assert "unknown model 'no_such_model'" in _one_error_line(capsys)
    assert main(["convert", "resnet50", "x.pth", str(tmp_path)]) == 2
    assert "installed ctxnets models: zootest_resnet18" in _one_error_line(capsys)
    assert main(["bench", "resnet18", "--vs", "nosuch_peer"]) == 2
    assert "unknown model 'nosuch_peer'" in _one_error_line(capsys)
    with pytest.raises(SystemExit) as e:
        main(["bench", "resnet18", "--vs", "resnet34", "--img-size", "0"])
    assert e.value.code == 2
    assert "must be at least 1, got 0" in capsys.readouterr().err


def test_info(zoo_package: CtxnetsPackage, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "zootest_resnet18", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["package"] == "zootest" and info["params"] == 11_689_512
    assert info["paper"]["paper_gflops"] == 1.8
    assert [f["reduction"] for f in info["feature_info"]] == [2, 4, 8, 16, 32]


def test_bench_command_writes_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "bench",
        "resnet18",
        "--vs",
        "resnet34",
        "--batch-size",
        "2",
        "--img-size",
        "64",
        "--compile",
        "off",
    ]
    assert main([*argv, "--mode", "infer", "--repeats", "2", "--warmup", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| infer, eager | resnet34 |" in out and "1.00x" in out
    data = json.loads((tmp_path / "bench.json").read_text())
    assert [r["name"] for r in data["results"]] == ["resnet18", "resnet34"]


def test_bench_runs_each_setting_in_its_own_process(tmp_path: Path) -> None:
    # the CPU memory measurement changes glibc's allocator for the rest of a process, so a second
    # setting must not be timed in the same one: every row still comes back, in setting order
    argv = ["bench", "resnet18", "--vs", "resnet34", "--batch-size", "2", "--img-size", "32"]
    argv += ["--mode", "both", "--compile", "off", "--repeats", "1", "--warmup", "1", "--out", str(tmp_path)]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert [(r["mode"], r["name"]) for r in rows] == [
        ("infer", "resnet18"),
        ("infer", "resnet34"),
        ("train", "resnet18"),
        ("train", "resnet34"),
    ]


def test_console_script_installed() -> None:
    exe = shutil.which("ctxnets")
    assert exe is not None, "the ctxnets console script is not on PATH"
    res = subprocess.run([exe, "info", "nosuch"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("ctxnets: error: unknown model 'nosuch'")
    assert torch.__version__  # the script ran in the same environment as the tests


def test_bench_native_size_uses_each_models_input_size(tmp_path: Path) -> None:
    argv = ["bench", "test_vit", "--vs", "resnet18", "--batch-size", "1", "--native-size", "--mode", "infer"]
    argv += ["--compile", "off", "--repeats", "1", "--warmup", "1", "--out", str(tmp_path)]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["results"]
    sizes = {r["name"]: r["img_size"] for r in rows}
    assert sizes == {
        "test_vit": timm.create_model("test_vit").pretrained_cfg["input_size"][-1],
        "resnet18": 224,
    }
    assert "(224px)" in (tmp_path / "bench.md").read_text()


def test_zoo_without_speed_is_deterministic(zoo_package: CtxnetsPackage, tmp_path: Path) -> None:
    # what docs/zoo commits and `nox -s zoo` compares: no timing, no machine, the same bytes every run
    outs = []
    for run in ("a", "b"):
        assert main(["zoo", "--models", "zootest_resnet18", "--no-speed", "--out", str(tmp_path / run)]) == 0
        outs.append({n: (tmp_path / run / n).read_text() for n in ("zoo.md", "zoo.json")})
    assert outs[0] == outs[1]
    md, data = outs[0]["zoo.md"], json.loads(outs[0]["zoo.json"])
    assert "img/s" not in md and "Measured on" not in md
    row = next(line for line in md.splitlines() if line.startswith("| zootest_resnet18 "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:5] == ["zootest_resnet18", "zootest", "224", "11,689,512", "11,689,512"]
    assert abs(float(cells[5]) - 1.8) < 0.05 and cells[6:] == ["1.8", "69.8", "pass"]  # no speed column
    assert data["rows"][0]["img_per_s"] is None and "machine" not in data["meta"]


class _FakeHfApi:
    """Records what ``ctxnets convert --push-to-hub`` asks of huggingface_hub; nothing leaves the machine."""

    calls: list[tuple[str, dict[str, object]]] = []

    def create_repo(self, repo_id: str, **kw: object) -> None:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kw}))

    def upload_folder(self, **kw: object) -> None:
        folder = Path(str(kw["folder_path"]))
        self.calls.append(("upload_folder", {**kw, "files": sorted(p.name for p in folder.iterdir())}))


def test_convert_push_to_hub_uploads_the_folder_with_a_model_card(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys
    import types

    from ctxnets_shared.weights import CheckpointConverter

    pkg = CtxnetsPackage(
        distribution="zootest",
        import_name="tests",
        paper="ResNet",
        models=("zootest_resnet18",),
        converter=CheckpointConverter(),
        citation="@inproceedings{he2016resnet, title={Deep Residual Learning for Image Recognition}}",
    )
    monkeypatch.setattr(packages, "_CACHE", {"zootest": pkg})
    hub = types.ModuleType("huggingface_hub")
    hub.HfApi = _FakeHfApi  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    _FakeHfApi.calls = []
    torch.save({"state_dict": timm.create_model("zootest_resnet18").state_dict()}, tmp_path / "r18.pth.tar")

    # without the flag nothing is uploaded
    assert main(["convert", "zootest_resnet18", str(tmp_path / "r18.pth.tar"), str(tmp_path / "plain")]) == 0
    assert _FakeHfApi.calls == [] and not (tmp_path / "plain" / "README.md").exists()

    out = tmp_path / "out"
    argv = ["convert", "zootest_resnet18", str(tmp_path / "r18.pth.tar"), str(out), "--push-to-hub", "me/r18"]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"pushed {out} to https://huggingface.co/me/r18"
    (create, c_kw), (upload, u_kw) = _FakeHfApi.calls
    assert create == "create_repo" and c_kw["repo_id"] == "me/r18" and c_kw["private"] is False
    assert upload == "upload_folder" and u_kw["repo_id"] == "me/r18" and u_kw["folder_path"] == str(out)
    assert u_kw["files"] == ["README.md", "config.json", "model.safetensors"]
    card = (out / "README.md").read_text()
    assert "library_name: timm" in card and "license: apache-2.0" in card
    assert "*ResNet* (arXiv:1512.03385)" in card
    assert "| parameters | 11,689,512 | 11,689,512 |" in card  # He et al.'s count, measured and claimed
    assert "| ImageNet-1k top-1 (%) | not re-measured | 69.8 |" in card
    assert "`r18.pth.tar` (SHA-256 `" in card and "CheckpointConverter" in card
    assert "Verified in `zootest`'s tests: official-layout checkpoints convert key for key." in card
    assert "```bibtex\n@inproceedings{he2016resnet" in card
    assert 'timm.create_model("hf-hub:me/r18", pretrained=True)' in card


def test_bench_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "By default eager inference only" in text
    for option, default in [
        ("--batch-size BATCH_SIZE images per step", "8"),
        ("--img-size IMG_SIZE square input resolution", "224"),
        ("or both", "infer"),
        ("untimed warm-up)", "off"),
        ("--warmup WARMUP untimed steps per model", "5"),
        ("the median is kept", "10"),
        ("--device DEVICE cpu or cuda", "cpu"),
    ]:
        assert f"{option} (default: {default})" in text, option
    assert "--threads THREADS torch intra-op threads (default: torch's choice)" in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_bench_defaults_to_eager_inference_with_progress_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "resnet18", "--vs", "resnet34", "--batch-size", "1", "--img-size", "32"]
    assert main([*argv, "--repeats", "2", "--warmup", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert [(r["mode"], r["compiled"], r["name"]) for r in rows] == [
        ("infer", False, "resnet18"),
        ("infer", False, "resnet34"),
    ]
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "[infer, eager] resnet18, resnet34: batch 1 at 32px on cpu"
    assert "[infer, eager] warming up resnet18: 1 untimed step(s)" in err
    assert "[infer, eager] measuring throughput: repeat 2/2, every model in turn" in err
    assert err[-1] == "[infer, eager] measuring peak memory: one more step per model"
    assert not any("CUDA_HOME" in line for line in err)


def test_bench_drops_torchs_cuda_home_notice_on_cpu(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # inductor imports torch.utils.cpp_extension, which logs this once on a machine with a CUDA toolkit
    # and no GPU; compilation itself is stubbed out here (its speed is not what is tested)
    import logging

    from ctxnets_shared.profiling import benchmark

    monkeypatch.setattr(torch, "compile", lambda model: model)
    log = logging.getLogger("torch.utils.cpp_extension")
    monkeypatch.setattr(log, "filters", [])
    benchmark({"m": torch.nn.Conv2d(3, 4, 3)}, batch_size=1, img_size=8, compile=True, warmup=1, repeats=1)
    with caplog.at_level(logging.WARNING):
        log.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
        log.warning("an unrelated warning still shows")
    assert [r.getMessage() for r in caplog.records] == ["an unrelated warning still shows"]


def test_version_imports_neither_torch_nor_timm(tmp_path: Path) -> None:
    import sys

    from ctxnets_shared import __version__

    code = (
        "import sys\n"
        "from ctxnets_shared.console import main\n"
        "rc = main(['--version'])\n"
        "heavy = sorted(m for m in ('torch', 'timm') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "sys.exit(rc)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"ctxnets-shared {__version__}\n"
    # the installed console script too: with torch and timm made unimportable it still answers
    for name in ("torch", "timm"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('{name} was imported')\n")
    exe = shutil.which("ctxnets")
    assert exe is not None
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    res = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60, env=env)
    assert (res.returncode, res.stdout) == (0, f"ctxnets-shared {__version__}\n"), res.stderr
    res = subprocess.run([exe, "list"], capture_output=True, text=True, timeout=60, env=env)
    assert "was imported" in res.stderr  # the poison works: any other command needs timm and torch


def test_zoo_chart_marks_models_measured_above_224_px(tmp_path: Path) -> None:
    from ctxnets_shared.zoo import ZooRow, point_label

    def row(model: str, size: int) -> ZooRow:
        return ZooRow(model, "pkg", size, 1, 1, True, 5.0, 5.0, True, 84.3, None, 1)

    assert point_label(row("hiri_vit_s", 448)) == "hiri_vit_s (448 px)"
    assert point_label(row("container_x", 768)) == "container_x (768 px)"
    assert point_label(row("cotnet50", 224)) == "cotnet50"
    written = write_outputs([row("cotnet50", 224), row("hiri_vit_s", 448)], tmp_path, None)
    assert (tmp_path / "zoo.png") in written and (tmp_path / "zoo.png").stat().st_size > 0
