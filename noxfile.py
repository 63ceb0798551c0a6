"""ctxnets sessions (nox with the uv backend). A bare ``nox`` runs every session except ``bench``.

Each session builds its own virtualenv from the committed ``uv.lock`` (``uv sync --locked``), so nothing
the machine happens to have installed leaks in: ``tests(package=...)`` gets only that package, ctxnets-shared
and its test group, so an undeclared import fails there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
# folder -> (distribution, import name, a model its wheel smoke test builds through timm, or None)
PACKAGES: dict[str, tuple[str, str, str | None]] = {
    "shared": ("ctxnets-shared", "ctxnets_shared", None),
    "cot": ("cotnet", "cot", "cotnet50"),
    "gcnet": ("gcnet", "gcnet", "gc_resnet50"),
    "care-ssl": ("care-ssl", "care_ssl", None),
    "hiri-vit": ("hiri-vit", "hiri_vit", "hiri_vit_s"),
    "container": ("container", "container", "container_v1_light"),
}
SRC_DIRS = ["shared/src", *(f"packages/{p}/src" for p in PACKAGES if p != "shared")]


def _xdist() -> tuple[list[str], dict[str, str]]:
    """pytest-xdist arguments and the environment its workers run in: the cores shared out as torch threads.

    Much of a suite's time is single-threaded Python (torch and timm imports in the subprocess tests, FX
    tracing, graph capture, deep copies) during which one core of two idles; two workers with one torch
    thread each cut the 2-core CI run by about a third. The arguments go before the session's posargs, so
    ``nox -s integration -- -n 0`` runs in one process again.
    """
    cores = os.cpu_count() or 1
    workers = max(2, min(cores // 2, 4))
    return ["-n", str(workers)], {"OMP_NUM_THREADS": str(max(1, cores // workers))}


def _folder(package: str) -> str:
    return "shared" if package == "shared" else f"packages/{package}"


def _sync(session: nox.Session, *args: str) -> None:
    """Install from uv.lock into this session's virtualenv (not the workspace's .venv)."""
    session.run_install(
        "uv",
        "sync",
        "--locked",
        "--no-default-groups",
        *args,
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
        external=True,
    )


@nox.session
@nox.parametrize("package", list(PACKAGES))
def tests(session: nox.Session, package: str) -> None:
    """One package's tests, in a venv holding only that package, ctxnets-shared and its test group."""
    dist = PACKAGES[package][0]
    _sync(session, "--package", dist, "--group", "test")
    # pytest exits 5 when it collects nothing: a package that should have tests then fails this session
    xdist_args, xdist_env = _xdist()
    session.run(
        "pytest",
        "-c",
        "pyproject.toml",
        f"{_folder(package)}/tests",
        "-p",
        "no:cacheprovider",
        *xdist_args,
        *session.posargs,
        env=xdist_env,
    )


@nox.session
def integration(session: nox.Session) -> None:
    """Cross-package composition tests with the whole workspace installed."""
    _sync(session, "--all-packages", "--extra", "cli", "--group", "integration")
    xdist_args, xdist_env = _xdist()
    session.run(
        "pytest",
        "-c",
        "pyproject.toml",
        "tests-integration",
        "-p",
        "no:cacheprovider",
        *xdist_args,
        *session.posargs,
        env=xdist_env,
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    _sync(session, "--only-group", "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=False)
def changelog(session: nox.Session) -> None:
    """Each package's current version has its entry (a ``## <version>`` heading) in its CHANGELOG.md."""
    import re

    import tomllib

    missing = []
    for package in PACKAGES:
        folder = ROOT / _folder(package)
        version = tomllib.loads((folder / "pyproject.toml").read_text())["project"]["version"]
        changelog = (folder / "CHANGELOG.md").read_text() if (folder / "CHANGELOG.md").is_file() else ""
        if not re.search(rf"^## {re.escape(version)}\b", changelog, flags=re.MULTILINE):
            missing.append(f"{_folder(package)}/CHANGELOG.md has no '## {version}' entry")
    if missing:
        session.error("; ".join(missing))


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over every package's sources."""
    _sync(session, "--all-packages", "--group", "lint")
    session.run("mypy", *SRC_DIRS)


@nox.session
def wheels(session: nox.Session) -> None:
    """Each package's wheel (built with --no-sources) installs with pip alone in a fresh venv and works.

    torch (several GB) is put into each fresh venv from uv's cache first to keep the session fast; pip then
    resolves everything else the wheel declares (timm, einops, safetensors, ctxnets-shared from its wheel)
    as a user's ``pip install`` would. The six venvs are checked side by side, with a seventh for the
    README's CPU-only install (torch from PyTorch's CPU index: no CUDA build, no nvidia-* packages).
    """
    _sync(session, "--only-group", "lint")  # gives the session venv a python; the work happens in fresh venvs
    work = Path(tempfile.mkdtemp(prefix="ctxnets-wheels-"))
    try:
        _check_wheels(session, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_wheels(session: nox.Session, work: Path) -> None:
    dist = work / "dist"
    for name, _, _ in PACKAGES.values():
        session.run(
            "uv", "build", "--package", name, "--no-sources", "--wheel", "--out-dir", str(dist), external=True
        )
    # the six venvs are independent and their checks mostly single-threaded (pip, imports), so they run
    # side by side; each package's log is printed whole, in order, once all are done
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        jobs = [pool.submit(_check_wheel, p, dist, work) for p in PACKAGES]
        jobs.append(pool.submit(_check_cpu_only_install, dist, work))
        results = [job.result() for job in jobs]
    failed = []
    for package, log, error in results:
        label = _folder(package) if package in PACKAGES else package
        session.log(f"wheel of {label}:\n{log}")
        if error:
            failed.append(f"{label}: {error}")
    if failed:
        session.error("wheel checks failed:\n" + "\n".join(failed))


def _check_wheel(package: str, dist: Path, work: Path) -> tuple[str, str, str | None]:
    """Fresh venv, torch from uv's cache, the wheels with pip, then imports, the model and the console
    script. Returns (package, its log, the failing command or None)."""
    name, module, model = PACKAGES[package]
    venv = work / f"venv-{package}"
    py = str(venv / "bin" / "python")
    shared_whl = next(dist.glob("ctxnets_shared-*.whl"))
    wheel = next(dist.glob(f"{name.replace('-', '_')}-*.whl"))
    wheels_to_install = [str(shared_whl)] if package == "shared" else [str(shared_whl), str(wheel)]
    check = f"import {module}, timm\nfrom ctxnets_shared import discover_packages\ndiscover_packages()\n"
    if model:
        check += f"m = timm.create_model({model!r})\n"
        check += f"print({model!r}, sum(p.numel() for p in m.parameters()))\n"
    if model and package != "gcnet":
        # a GC composition without gcnet installed is a clear error naming it, not timm's other "gc"
        # (one interpreter for both checks: each start imports torch and timm, seconds on 2 cores)
        check += (
            "try:\n"
            f"    timm.create_model({model!r}, attn_layer='gc')\n"
            "except ValueError as e:\n"
            "    assert 'pip install gcnet' in str(e), e\n"
            "    print('gc without gcnet:', e)\n"
            "else:\n"
            "    raise SystemExit('attn_layer=gc built without gcnet installed')\n"
        )
    commands = [
        [sys.executable, "-m", "venv", str(venv)],
        [shutil.which("uv") or "uv", "pip", "install", "--python", py, "torch"],
        [py, "-m", "pip", "install", "--quiet", *wheels_to_install],
        [py, "-c", check],
        [str(venv / "bin" / "ctxnets"), "list"],
    ]
    log = []
    for cmd in commands:
        shown = " ".join(cmd) if cmd[1] != "-c" else f"{cmd[0]} -c <import and model check>"
        res = subprocess.run(cmd, capture_output=True, text=True)
        log.append(f"$ {shown}\n{res.stdout}{res.stderr}".rstrip())
        if res.returncode != 0:
            return package, "\n".join(log), f"exit {res.returncode}: {shown}"
    return package, "\n".join(log), None


# the CPU-only install README.md and docs/index.md document: torch (and torchvision) from PyTorch's CPU
# index first, then the wheels with pip. PyTorch's index is not reachable from CI, so this checks the half
# that is ours: with a torch already installed, pip adds no torch, torchvision, triton or nvidia-* package
# of its own (any torch>=2.4 satisfies the wheels), so the CUDA libraries a CPU user skipped stay out.
_CPU_CHECK = """\
import json, sys
report = json.load(open(sys.argv[1]))
names = sorted(item["metadata"]["name"].lower() for item in report["install"])
heavy = [n for n in names if n in ("torch", "torchvision", "triton") or n.startswith("nvidia")]
assert not heavy, f"pip would install {heavy} beside the torch already there"
print("pip would add only:", ", ".join(names))
"""


def _check_cpu_only_install(dist: Path, work: Path) -> tuple[str, str, str | None]:
    """With torch installed first (as the documented CPU-only install does), the wheels pull no CUDA
    packages: pip's dry-run report, read by :data:`_CPU_CHECK`."""
    venv = work / "venv-cpu"
    py = str(venv / "bin" / "python")
    report = str(work / "cpu-only-report.json")
    wheels = [str(next(dist.glob("ctxnets_shared-*.whl"))), str(next(dist.glob("cotnet-*.whl")))]
    commands = [
        [sys.executable, "-m", "venv", str(venv)],
        [shutil.which("uv") or "uv", "pip", "install", "--python", py, "torch", "torchvision"],
        [py, "-m", "pip", "install", "--quiet", "--dry-run", "--report", report, *wheels],
        [py, "-c", _CPU_CHECK, report],
    ]
    log = []
    for cmd in commands:
        shown = " ".join(cmd) if cmd[1] != "-c" else f"{cmd[0]} -c <CPU-only check>"
        res = subprocess.run(cmd, capture_output=True, text=True)
        log.append(f"$ {shown}\n{res.stdout}{res.stderr}".rstrip())
        if res.returncode != 0:
            return "cpu-only", "\n".join(log), f"exit {res.returncode}: {shown}"
    return "cpu-only", "\n".join(log), None


@nox.session
def docs(session: nox.Session) -> None:
    """The mkdocs-material site with API reference, built with --strict."""
    _sync(session, "--all-packages", "--group", "docs")
    site = os.environ.get("DOCS_SITE_DIR", "site")
    session.run("mkdocs", "build", "--strict", "--site-dir", site)
    broken = _broken_links(ROOT / site)
    if broken:
        session.error("links that do not resolve to a built page or file:\n" + "\n".join(broken))


_LINK = re.compile(r"\]\(([^)\s]+)\)")  # the target of [text](target) and ![alt](target)
_FENCE = re.compile(r"^```.*?^```", flags=re.MULTILINE | re.DOTALL)


def _broken_links(site: Path) -> list[str]:
    """Relative links of README.md, docs/*.md and the package READMEs that point at nothing.

    A link must name an existing file of the repository; a link into docs/ must also have its built
    counterpart in ``site`` (``docs/cot.md`` -> ``site/cot/index.html``, an image or JSON file copied
    as is), so the README's links resolve to pages of the built site.
    """
    docs = ROOT / "docs"
    sources = [ROOT / "README.md", *sorted(docs.glob("*.md")), *sorted(ROOT.glob("packages/*/README.md"))]
    broken = []
    for src in sources:
        text = _FENCE.sub("", src.read_text())
        for target in _LINK.findall(text):
            path = target.split("#", 1)[0]
            if not path or re.match(r"^[a-z][a-z0-9+.-]*:", path):  # an anchor on the page, a URL
                continue
            where = f"{src.relative_to(ROOT)}: ({target})"
            file = (src.parent / path).resolve()
            if not file.is_file():
                broken.append(
                    f"{where}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}"
                )
                continue
            if not file.is_relative_to(docs):
                continue
            rel = file.relative_to(docs)
            if rel.suffix == ".md":
                built = site / ("index.html" if rel.stem == "index" else rel.with_suffix("") / "index.html")
            else:
                built = site / rel
            if not built.is_file():
                broken.append(f"{where}: not built ({built.relative_to(site)} missing from the site)")
    return broken


@nox.session
def zoo(session: nox.Session) -> None:
    """``ctxnets zoo --no-speed`` regenerated and compared with the committed docs/zoo: no drift.

    Without the throughput column the table and the JSON depend only on the code and the locked torch/timm,
    so they must match byte for byte (the JSON is compared as data); zoo.png is redrawn but not compared
    (its bytes depend on matplotlib's renderer). ``ctxnets zoo`` itself fails when a model misses its
    paper's numbers. To update the docs: ``uv run ctxnets zoo --no-speed --out docs/zoo``.
    """
    _sync(session, "--all-packages", "--extra", "cli")
    fresh = Path(tempfile.mkdtemp(prefix="ctxnets-zoo-"))
    try:
        session.run("ctxnets", "zoo", "--no-speed", "--out", str(fresh))
        problems = _zoo_drift(ROOT / "docs" / "zoo", fresh)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    if problems:
        session.error(
            "docs/zoo is out of date; run `uv run ctxnets zoo --no-speed --out docs/zoo` and commit it:\n"
            + "\n".join(problems)
        )


def _zoo_drift(committed: Path, fresh: Path) -> list[str]:
    import difflib
    import json

    problems = [
        f"docs/zoo/{n} is missing" for n in ("zoo.md", "zoo.json", "zoo.png") if not (committed / n).is_file()
    ]
    if problems:
        return problems
    old_md, new_md = (committed / "zoo.md").read_text(), (fresh / "zoo.md").read_text()
    if old_md != new_md:
        diff = difflib.unified_diff(
            old_md.splitlines(), new_md.splitlines(), "docs/zoo/zoo.md", "fresh zoo.md", lineterm=""
        )
        problems.append("\n".join(diff))
    old_js, new_js = (json.loads((d / "zoo.json").read_text()) for d in (committed, fresh))
    if old_js != new_js:
        old_rows = {r["model"]: r for r in old_js["rows"]}
        for row in new_js["rows"]:
            if old_rows.get(row["model"]) != row:
                problems.append(f"zoo.json {row['model']}: committed {old_rows.get(row['model'])}, now {row}")
        if old_js["meta"] != new_js["meta"] or len(old_rows) != len(new_js["rows"]):
            problems.append(
                f"zoo.json: committed {old_js['meta']}, {len(old_rows)} rows; now {new_js['meta']}"
            )
    return problems


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Speed and memory side by side (not run by a bare ``nox``): CoTNet-50 and SE-CoTNetD-50 vs ResNet-50."""
    _sync(session, "--all-packages", "--extra", "cli")
    args = session.posargs or ["--out", "bench-out"]
    session.run("ctxnets", "bench", "cotnet50", "se_cotnetd_50", "--vs", "resnet50", *args)
