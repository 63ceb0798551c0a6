"""No example in the docs that is not run somewhere.

Every ```python block of docs/*.md, the root README and the five package READMEs runs here, the blocks of
one file in order in one namespace (a page's later examples build on its earlier ones) of a fresh Python
interpreter (docs_runner.py), in a temporary working folder: a page sees only what it imports itself, so
an example that forgot ``import gcnet`` fails here as it would for a reader. A block that cannot run on a
CPU in CI (an ImageNet path, hours of training) is marked in the markdown by an HTML comment on the line
before it, ``<!-- not-run: the reason -->``: it is still compiled (a syntax error fails), not executed,
and counted. An unmarked block that raises fails its file's test with the file and line.

```bash blocks are not run, but every ``ctxnets``, ``care-ssl``, ``gcnet`` and ``hiri-vit`` command in them
(also behind ``uv run`` or ``torchrun -m``) is parsed by that command's own argparse parser, so a renamed
subcommand or flag fails here; ``python SCRIPT`` must name a file of the repository and ``pip install``
a package of the workspace with extras it declares (or, with ``--index-url``, torch and torchvision from
PyTorch's CPU index).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from importlib.metadata import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).with_name("docs_runner.py")
DOC_FILES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "packages").glob("*/README.md")),
]
NOT_RUN = re.compile(r"^\s*<!--\s*not-run:(.*?)-->\s*$")
OPEN = re.compile(r"^(\s*)```([\w-]*)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it starts (1-based line of its first code line), language, code."""

    path: str
    line: int
    lang: str
    code: str
    not_run: str | None  # the reason given in a preceding ``<!-- not-run: ... -->``, or None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def extract_blocks(text: str, path: str) -> list[Block]:
    """The fenced blocks of a markdown text; a not-run marker that precedes no block is a ValueError."""
    lines = text.splitlines()
    blocks: list[Block] = []
    markers: dict[int, str] = {}
    i = 0
    while i < len(lines):
        m = NOT_RUN.match(lines[i])
        if m:
            reason = m.group(1).strip()
            if not reason:
                raise ValueError(f"{path}:{i + 1}: a not-run marker must give its reason")
            markers[i] = reason
        m = OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        lang = m.group(2)
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise ValueError(f"{path}:{i + 1}: code block never closed")
        prev = i - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        reason = markers.pop(prev, None)
        code = textwrap.dedent("\n".join(lines[i + 1 : end]))
        blocks.append(Block(path, i + 2, lang, code, reason))
        i = end + 1
    if markers:
        where = ", ".join(f"{path}:{n + 1}" for n in markers)
        raise ValueError(f"not-run marker(s) not directly before a code block: {where}")
    return blocks


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


BLOCKS = {_rel(p): extract_blocks(p.read_text(), _rel(p)) for p in DOC_FILES}
PY_FILES = [f for f, blocks in BLOCKS.items() if any(b.lang == "python" for b in blocks)]


class ExampleError(AssertionError):
    """An unmarked docs example raised, or a block is not valid Python."""


def run_python_blocks(blocks: list[Block], cwd: Path) -> tuple[int, int]:
    """Run a page's python blocks in a fresh interpreter, in ``cwd``; returns (run, not run)."""
    page = [{"where": b.where, "code": b.code, "not_run": b.not_run} for b in blocks if b.lang == "python"]
    blocks_file, result_file = cwd / ".docs_blocks.json", cwd / ".docs_result.json"
    blocks_file.write_text(json.dumps(page))
    proc = subprocess.run(
        [sys.executable, str(RUNNER), str(blocks_file), str(result_file)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        tail = proc.stderr.rpartition("example at ")
        raise ExampleError(f"example at {tail[2].strip()}" if tail[1] else proc.stderr[-2000:])
    result = json.loads(result_file.read_text())
    return result["ran"], result["skipped"]


def test_every_doc_file_is_read() -> None:
    # the README and every package README are among the files, and the docs have examples to run
    assert {"README.md", "docs/index.md"} <= set(BLOCKS)
    assert len([f for f in BLOCKS if f.startswith("packages/")]) == 5
    assert len(PY_FILES) >= 8


@pytest.mark.parametrize("doc", PY_FILES)
def test_python_examples_run(doc: str, tmp_path: Path) -> None:
    ran, skipped = run_python_blocks(BLOCKS[doc], tmp_path)  # examples that save write in tmp_path
    print(f"{doc}: {ran} python block(s) run, {skipped} marked not-run")
    assert ran + skipped == sum(b.lang == "python" for b in BLOCKS[doc])


def test_not_run_blocks_are_counted_and_justified(capsys: pytest.CaptureFixture[str]) -> None:
    marked = [b for blocks in BLOCKS.values() for b in blocks if b.lang == "python" and b.not_run]
    total = sum(b.lang == "python" for blocks in BLOCKS.values() for b in blocks)
    with capsys.disabled():
        print(f"\ndocs python examples: {total - len(marked)} run, {len(marked)} marked not-run")
        for b in marked:
            print(f"  not run: {b.where}: {b.not_run}")
    assert all(len(b.not_run or "") >= 10 for b in marked), "say why a block is not run"
    assert len(marked) <= total // 4, "most examples must run"


def test_runner_fails_on_an_unmarked_broken_block_and_skips_a_marked_one(tmp_path: Path) -> None:
    good = "```python\nx = 1\n```\n"
    broken = "```python\nraise RuntimeError('needs /imagenet')\n```\n"
    marked = "<!-- not-run: needs ImageNet -->\n" + broken
    uses_x = "```python\nassert x == 1\n```\n"  # blocks of one page share a namespace
    assert run_python_blocks(extract_blocks(good + marked + uses_x, "t.md"), tmp_path) == (2, 1)
    with pytest.raises(ExampleError, match=r"t\.md:5 raised RuntimeError: needs /imagenet"):
        run_python_blocks(extract_blocks(good + broken, "t.md"), tmp_path)
    with pytest.raises(ExampleError, match=r"t\.md:3 is not valid Python"):  # a marked block is compiled
        bad = "<!-- not-run: needs ImageNet -->\n```python\nx = (\n```\n"
        run_python_blocks(extract_blocks(bad, "t.md"), tmp_path)
    with pytest.raises(ValueError, match="not directly before a code block"):
        extract_blocks("<!-- not-run: dangling -->\n\ntext\n\n" + good, "t.md")
    with pytest.raises(ValueError, match="must give its reason"):
        extract_blocks("<!-- not-run: -->\n" + good, "t.md")


def test_each_page_runs_in_a_fresh_interpreter(tmp_path: Path) -> None:
    # this process has registered gcnet's models; a page that uses one without `import gcnet` must still fail
    import timm

    import gcnet  # noqa: F401

    assert timm.is_model("gc_resnet50")
    forgot = '```python\nimport timm\n\nmodel = timm.create_model("gc_resnet50")\n```\n'
    with pytest.raises(ExampleError, match=r"t\.md:2 raised RuntimeError: Unknown model \(gc_resnet50\)"):
        run_python_blocks(extract_blocks(forgot, "t.md"), tmp_path)


# ---- shell blocks: the commands exist and take the flags shown ----------------------------------------

CLI_MODULES = {
    "ctxnets": "ctxnets_shared.cli",
    "care-ssl": "care_ssl.cli",
    "gcnet": "gcnet.cli",
    "hiri-vit": "hiri_vit.train",
}
TORCHRUN_MODULES = {"care_ssl": "care_ssl.cli", "hiri_vit.train": "hiri_vit.train"}


def shell_commands(block: Block) -> list[tuple[str, list[str]]]:
    """(where, argv) per command of a shell block: continuations joined, comments dropped, $VARs of earlier
    ``VAR="..."`` lines expanded."""
    joined = block.code.replace("\\\n", " ")
    env: dict[str, str] = {}
    out = []
    for n, line in enumerate(joined.splitlines()):
        assign = re.match(r'^(\w+)="(.*)"\s*$', line.strip())
        if assign:
            env[assign.group(1)] = assign.group(2)
            continue
        line = re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), m.group(0)), line)
        argv = shlex.split(line, comments=True)
        if argv:
            out.append((f"{block.path}:{block.line + n}", argv))
    return out


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_cli(module: str, args: list[str], where: str) -> None:
    """``args`` parse with the command's parser; with a ``...`` placeholder: subcommand and flags exist."""
    parser = importlib.import_module(module).build_parser()
    if "..." in args:
        args = [a for a in args if a != "..."]
        subs = _subparsers(parser)
        if subs:
            assert args and args[0] in subs, f"{where}: {args[:1]} is not one of {sorted(subs)}"
            parser = subs[args[0]]
        known = {s for a in parser._actions for s in a.option_strings}
        unknown = [a.split("=")[0] for a in args if a.startswith("--") and a.split("=")[0] not in known]
        assert not unknown, f"{where}: {module} does not take {unknown}"
        return
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as e:
        assert e.code == 0, f"{where}: {shlex.join(args)}: {err.getvalue().strip().splitlines()[-1:]}"


def _workspace_extras() -> dict[str, set[str]]:
    from ctxnets_shared.packages import discover_packages

    return {
        d: set(metadata(d).get_all("Provides-Extra") or ()) for d in ["ctxnets-shared", *discover_packages()]
    }


CPU_INDEX = "https://download.pytorch.org/whl/cpu"
SHELL_BLOCKS = [b for blocks in BLOCKS.values() for b in blocks if b.lang in ("bash", "sh", "console")]


def test_shell_commands_in_the_docs_exist() -> None:
    extras = _workspace_extras()
    checked = 0
    for block in SHELL_BLOCKS:
        for where, argv in shell_commands(block):
            if argv[:2] == ["uv", "run"]:
                argv = argv[2:]
            if argv[0] in CLI_MODULES:
                check_cli(CLI_MODULES[argv[0]], argv[1:], where)
            elif argv[0] == "torchrun":
                module = argv[argv.index("-m") + 1]
                assert module in TORCHRUN_MODULES, f"{where}: torchrun -m {module} is not a ctxnets command"
                check_cli(TORCHRUN_MODULES[module], argv[argv.index("-m") + 2 :], where)
            elif argv[0] == "python":
                assert (ROOT / argv[1]).is_file(), f"{where}: no script {argv[1]}"
            elif argv[:2] == ["pip", "install"] and "--index-url" in argv:
                # the CPU-only install: PyTorch's own packages from its CPU index, nothing else
                index = argv[argv.index("--index-url") + 1]
                assert index == CPU_INDEX, f"{where}: torch from {index}, not {CPU_INDEX}"
                rest = set(argv[2:]) - {"--index-url", index}
                assert rest <= {"torch", "torchvision"}, f"{where}: {sorted(rest)} from the CPU index"
            elif argv[:2] == ["pip", "install"]:
                for req in argv[2:]:
                    name, _, extra = req.partition("[")
                    if name == "uv":
                        continue
                    assert name in extras, f"{where}: {name} is not a workspace package"
                    for e in filter(None, extra.rstrip("]").split(",")):
                        assert e in extras[name], f"{where}: {name} has no extra {e!r}"
            else:
                continue
            checked += 1
    assert checked >= 30, f"only {checked} commands found in the docs' shell blocks"


def test_shell_check_catches_a_wrong_command() -> None:
    block = Block(
        "t.md", 3, "bash", 'ARGS="--no-such-flag 1"\nuv run care-ssl pretrain $ARGS  # comment\n', None
    )
    ((where, argv),) = shell_commands(block)
    assert (where, argv) == ("t.md:4", ["uv", "run", "care-ssl", "pretrain", "--no-such-flag", "1"])
    with pytest.raises(AssertionError, match=r"t\.md:4: pretrain --no-such-flag 1"):
        check_cli("care_ssl.cli", argv[3:], where)
    with pytest.raises(AssertionError, match="does not take"):  # with a placeholder, flags still checked
        check_cli("care_ssl.cli", ["pretrain", "--bogus", "..."], where)
    with pytest.raises(AssertionError, match="is not one of"):
        check_cli("ctxnets_shared.cli", ["zoom", "..."], where)
    check_cli("ctxnets_shared.cli", ["zoo", "--no-speed", "--out", "x"], where)


# ---- citations and the weights page ---------------------------------------------------------------------


def test_citation_file_and_a_bibtex_block_per_package() -> None:
    import yaml

    from ctxnets_shared.packages import discover_packages

    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["license"] == "Apache-2.0" and cff["title"].startswith("ctxnets")
    assert cff["authors"] and cff["version"] == metadata("ctxnets-shared")["Version"]
    readmes = sorted((ROOT / "packages").glob("*/README.md"))
    assert len(readmes) == 5
    for readme in readmes:
        bib = [b for b in extract_blocks(readme.read_text(), readme.name) if b.lang == "bibtex"]
        assert len(bib) == 1, readme
        assert re.match(r"@(article|inproceedings)\{\w+,", bib[0].code) and "title" in bib[0].code, readme
    for pkg in discover_packages().values():
        if pkg.citation:  # what model cards quote is the README's block
            readme = ROOT / ("packages/" + pkg.distribution.replace("cotnet", "cot")) / "README.md"
            assert pkg.citation.strip() in readme.read_text(), pkg.distribution


def test_weights_page_lists_every_model_and_tag() -> None:
    import timm

    from ctxnets_shared.packages import discover_packages

    page = (ROOT / "docs" / "weights.md").read_text()
    for pkg in discover_packages().values():
        for model in pkg.models:
            assert re.search(rf"\b{model}\b", page), f"docs/weights.md does not mention {model}"
    tags = [
        t
        for t in timm.list_models(pretrained=True)
        if t.split(".")[0] in {m for p in discover_packages().values() for m in p.models}
    ]
    assert len(tags) == 9
    for tag in tags:
        cfg = timm.get_pretrained_cfg(tag)
        assert f"`{tag}`" in page and cfg.weights_page in page, tag


def test_sphinx_roles_in_docstrings_become_references() -> None:
    # the mkdocs hook behind the API pages (mkdocs.yml `hooks:`); the built site is checked by `nox -s docs`
    spec = importlib.util.spec_from_file_location("sphinx_roles", ROOT / "docs" / "hooks" / "sphinx_roles.py")
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    html = (
        "see :class:<code>~ctxnets_shared.weights.errors.UnsafeCheckpointError</code>, "
        ":func:<code>save_pretrained()</code> and :mod:<code>ctxnets_shared.weights.unpickle</code>"
    )
    assert hook.roles_to_refs(html) == (
        'see <autoref identifier="ctxnets_shared.weights.errors.UnsafeCheckpointError" optional>'
        "<code>UnsafeCheckpointError</code></autoref>, "
        '<autoref identifier="save_pretrained" optional><code>save_pretrained()</code></autoref> and '
        '<autoref identifier="ctxnets_shared.weights.unpickle" optional>'
        "<code>ctxnets_shared.weights.unpickle</code></autoref>"
    )
    assert hook.roles_to_refs("a <code>plain</code> span") == "a <code>plain</code> span"
