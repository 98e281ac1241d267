"""A MkDocs hook: the build fails on reStructuredText markup in a docstring.

The API reference renders docstrings as Markdown (Google style, maths as `$...$` and
`$$...$$`), so a Sphinx role, a directive or a double-backtick literal would show as raw
text on the site. `mkdocs build` (hence `make docs`) stops with the place of each one;
`tests/test_docs.py` runs the same check.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("glow_train", "hydra_plugins")

#: what reStructuredText looks like, and what to write instead
MARKUP = {
    "a Sphinx role (write `name` or $maths$)": re.compile(r":(?:[a-z]+:)?[a-z]+:`"),
    "a directive such as `.. math::` (write $$...$$, or a plain paragraph)": re.compile(
        r"^\s*\.\. [a-z-]+::?", re.M
    ),
    "a double-backtick literal (write single backticks)": re.compile(r"(?<!`)``[^`\n]+``(?!`)"),
    "a reST literal-block marker `::` (end the line with `:` and indent the block)": re.compile(
        r"^(?!\s*\.\. ).*\S::[ \t]*$", re.M
    ),
    "a reST link (write [text](url))": re.compile(r">`__?\b"),
}


def docstrings(source: str) -> list[tuple[int, str]]:
    """`(line, text)` of every docstring of a module: those of the module, its classes and
    functions, and the string under an assignment (an attribute's docstring)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            if isinstance(node.value.value, str):
                found.append((node.lineno, node.value.value))
    return found


def rest_markup(source: str) -> list[tuple[int, str]]:
    """`(line, what)` of each piece of reStructuredText in the docstrings of `source`."""
    hits = []
    for line, text in docstrings(source):
        for what, pattern in MARKUP.items():
            for match in pattern.finditer(text):
                hits.append((line + text.count("\n", 0, match.start()), what))
    return sorted(hits)


def check(root: Path = ROOT) -> list[str]:
    """`path:line: what` for every piece of reStructuredText under `SOURCES`."""
    problems = []
    for folder in SOURCES:
        for path in sorted((root / folder).rglob("*.py")):
            for line, what in rest_markup(path.read_text(encoding="utf-8")):
                problems.append(f"{path.relative_to(root)}:{line}: {what}")
    return problems


def on_pre_build(config, **kwargs) -> None:
    """Stop the build (a `PluginError`) if a docstring holds reStructuredText."""
    from mkdocs.exceptions import PluginError

    problems = check()
    if problems:
        listing = "\n  ".join(problems)
        raise PluginError(f"reStructuredText in docstrings (Markdown expected):\n  {listing}")
