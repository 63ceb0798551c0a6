"""``care-ssl`` flags: the names both training commands share, defaults in ``--help``, required
``--model`` / ``--data``, the old ``--num-workers`` spelling. Parser only, nothing trains."""

from __future__ import annotations

import re

import pytest

from care_ssl.cli import build_parser, main
from care_ssl.train import RESUME_KEYS, PretrainConfig

REQUIRED = ["--model", "resnet18", "--data", "digits"]


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def help_text(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([command, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (
            "pretrain",
            [
                "--img-size IMG_SIZE square input side; a multiple of 32 is safest (default: 64)",
                "--epochs EPOCHS epochs of the cosine schedule (default: 10)",
                "--batch-size BATCH_SIZE per process (default: 64)",
                "--lr LR default: 0.05 x global batch / 256 (the paper)",
                "--amp, --no-amp float16 mixed precision with a gradient scaler on CUDA "
                "(no effect on the CPU) "
                "(default: True)",
                "--warmup-epochs WARMUP_EPOCHS linear warm-up, at most a tenth of the run (default: 10.0)",
                "(default: auto)",
                "--workers WORKERS DataLoader worker processes (per process) (default: 0)",
                "--no-progress no progress bar",
            ],
        ),
        ("probe", ["linear-probe epochs (default: 30)", "(default: 256)", "(default: auto)"]),
        ("export", ["backbone of --official (default: resnet50)"]),
    ],
)
def test_help_shows_the_defaults(command: str, shown: list[str], capsys) -> None:
    text = help_text(command, capsys)
    for s in shown:
        assert s in text, s
    assert "--num-workers" not in text  # the old spelling still parses, but is not advertised


@pytest.mark.parametrize(
    ("argv", "missing"),
    [
        (["pretrain", "--data", "digits"], "--model"),
        (["pretrain", "--model", "resnet18"], "--data"),
        (["pretrain"], "--model, --data"),
        (["probe", "--model", "resnet18"], "--data"),
        (["probe", "--data", "digits"], "one of the arguments --weights --model is required"),
    ],
)
def test_model_and_data_are_required(argv: list[str], missing: str, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert missing in err and ("required" in err), err


def test_shared_flags_and_the_old_spelling() -> None:
    a = parse("pretrain", *REQUIRED)
    assert (a.workers, a.amp, a.device, a.warmup_epochs, a.no_progress) == (0, True, "auto", 10.0, False)
    a = parse("pretrain", *REQUIRED, "--no-amp", "--workers", "3", "--device", "cuda:1", "--no-progress")
    assert (a.amp, a.workers, a.device, a.no_progress) == (False, 3, "cuda:1", True)
    assert parse("pretrain", *REQUIRED, "--amp").amp is True
    assert parse("pretrain", *REQUIRED, "--num-workers", "2").workers == 2  # deprecated, still read
    assert parse("probe", "--model", "resnet18", "--data", "digits", "--workers", "2").workers == 2
    # the parsed flags are exactly PretrainConfig's fields (the config takes them as they are)
    a = parse("pretrain", *REQUIRED)
    fields = set(PretrainConfig.__dataclass_fields__)
    assert set(vars(a)) - {"command"} == fields
    assert {"workers", "device", "no_progress", "out", "resume", "save_every"}.isdisjoint(RESUME_KEYS)
    assert {"amp", "warmup_epochs", "lr", "model", "data"} <= set(RESUME_KEYS)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "gpu"], "expected auto, cpu, cuda or cuda:N, got 'gpu'"),
        (["--workers", "-1"], "must be >= 0, got -1"),
    ],
)
def test_bad_shared_flags_are_refused_by_the_parser(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["pretrain", *REQUIRED, *argv])
    assert e.value.code == 2
    assert re.search(re.escape(message), capsys.readouterr().err)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num-workers", "-1"], "--workers must be >= 0, got -1"),  # the old spelling, same check
        (["--warmup-epochs", "-1"], "--warmup-epochs must be >= 0, got -1.0"),
    ],
)
def test_negative_counts_are_one_line(argv: list[str], message: str, tmp_path, capsys) -> None:
    assert main(["pretrain", *REQUIRED, *argv, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"care-ssl pretrain: error: {message}"
