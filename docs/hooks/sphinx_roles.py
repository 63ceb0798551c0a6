"""mkdocs hook: Sphinx roles in docstrings (``:func:`x```, ``:class:`~a.b.C```) become cross-references.

The API pages render docstrings with mkdocstrings (Google style, markdown), where a Sphinx role is no
markup: ``:class:`CheckpointConverter``` came out as the literal ``:class:`` before the code. After each
page is converted, the role and its code span become an optional mkdocs-autorefs reference: a link where
the name is a documented object (a full dotted path), plain code otherwise (autorefs' ``optional``, so an
unknown name never fails ``mkdocs build --strict``). ``~`` shows only the last component, as in Sphinx.
"""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(?:py:)?(func|class|meth|data|mod|attr|exc|obj|const):<code>(~?)([\w.]+)(\(\))?</code>")


def _replace(m: re.Match[str]) -> str:
    _, tilde, target, call = m.groups()
    shown = target.rsplit(".", 1)[-1] if tilde else target
    return f'<autoref identifier="{target}" optional><code>{shown}{call or ""}</code></autoref>'


def roles_to_refs(html: str) -> str:
    """Replace every ``:role:<code>name</code>`` of rendered HTML by an optional autorefs reference."""
    return ROLE.sub(_replace, html)


def on_page_content(html: str, **kwargs: Any) -> str:
    return roles_to_refs(html)
