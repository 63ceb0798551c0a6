"""Runs the python blocks of one docs page in this interpreter: ``python docs_runner.py BLOCKS RESULT``.

test_docs_examples.py starts one fresh interpreter per page, so a page's examples see only what they
import themselves (a forgotten ``import gcnet`` fails here even when the test process has imported it).
BLOCKS (JSON) is a list of ``{"where": "docs/x.md:12", "code": "...", "not_run": null | "reason"}``; the
blocks run in order in one namespace (a page's later examples build on its earlier ones). A marked block
is compiled, not run. On success RESULT gets ``{"ran": n, "skipped": m}``; the first failure is one line
on stderr (``example at WHERE raised TYPE: message``) after its traceback, exit status 1.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


class ExampleError(Exception):
    """An unmarked block raised: the message names the block."""


def run_blocks(blocks: list[dict[str, str | None]]) -> tuple[int, int]:
    """Compile every block, run the unmarked ones in order in one namespace; returns (run, not run).

    Raises:
        ExampleError: a block (marked or not) is not valid Python, or an unmarked block raised (chained to
            what it raised).
    """
    import torch  # only to seed the examples' random draws; the namespace stays empty

    torch.manual_seed(0)
    namespace: dict[str, object] = {"__name__": "__docs_example__"}
    ran = skipped = 0
    for b in blocks:
        where, code = str(b["where"]), str(b["code"])
        try:  # marked blocks must at least be valid Python
            compiled = compile(code, where, "exec")
        except SyntaxError as e:
            msg = f"example at {where} is not valid Python: {e.msg} (its line {e.lineno})"
            raise ExampleError(msg) from e
        if b["not_run"] is not None:
            skipped += 1
            continue
        try:
            exec(compiled, namespace)
        except Exception as e:
            raise ExampleError(f"example at {where} raised {type(e).__name__}: {e}") from e
        ran += 1
    return ran, skipped


def main(argv: list[str]) -> int:
    blocks_file, result_file = argv
    blocks = json.loads(Path(blocks_file).read_text())
    try:
        ran, skipped = run_blocks(blocks)
    except ExampleError as e:
        traceback.print_exception(e.__cause__)
        print(e, file=sys.stderr)
        return 1
    Path(result_file).write_text(json.dumps({"ran": ran, "skipped": skipped}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
