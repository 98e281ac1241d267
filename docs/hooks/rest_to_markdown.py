"""Convert the reStructuredText of docstrings to the Markdown the reference renders.

A maintainer's tool for a file that still has Sphinx markup (after a merge, or code
from elsewhere): `python docs/hooks/rest_to_markdown.py glow_train/x.py ...` rewrites
the docstrings (and `#:` comments) of the files in place:

- `:math:`x`` becomes `$x$`; a docstring with a backslash becomes a raw string;
- a role (`:func:`, `:class:`, `:meth:`, `:mod:`, `:data:`, `:attr:`, `:exc:`,
  `:obj:`) becomes the backticked name (`~a.b.c` shows as `c`);
- a double-backtick literal becomes a single-backtick one;
- a line ending in the literal-block marker `::` ends in `:`.

Display maths (`.. math::`) and other directives are listed, not converted: write them
as a `$$` line, the formula, and a `$$` line. Then `make docs` (which runs
`no_rest.py`) must pass.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROLE = re.compile(r":(?:py:)?(math|func|class|meth|mod|data|attr|exc|obj):`([^`]+)`")
LITERAL = re.compile(r"``(.+?)``", re.S)
DIRECTIVE = re.compile(r"^\s*\.\. [a-z-]+::", re.M)


def _role(match: re.Match) -> str:
    kind, target = match.group(1), match.group(2)
    if kind == "math":
        return f"${target}$"
    shown = target.lstrip("~").split(".")[-1] if target.startswith("~") else target
    return f"`{shown}`"


def convert_text(text: str) -> str:
    """The Markdown of one docstring's source text (directives left as they are)."""
    text = ROLE.sub(_role, text)
    text = LITERAL.sub(lambda m: f"`{m.group(1)}`", text)
    return re.sub(r"^(?!\s*\.\. )(.*\S)::[ \t]*$", r"\1:", text, flags=re.M)


def _spans(source: str) -> list[tuple[int, int]]:
    """Character spans of the docstrings (string statements) of `source`."""
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))

    def offset(line: int, col: int) -> int:  # ast columns count UTF-8 bytes
        return starts[line - 1] + len(source[starts[line - 1] :].encode()[:col].decode())

    return [
        (offset(n.lineno, n.col_offset), offset(n.end_lineno, n.end_col_offset))
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
        if isinstance(n.value.value, str)
    ]


def convert_source(source: str) -> str:
    """`source` with its docstrings and `#:` comments converted."""
    for start, end in sorted(_spans(source), reverse=True):
        text = convert_text(source[start:end])
        quote = re.match(r"([a-zA-Z]*)(\"\"\"|''')", text)
        if quote and "\\" in text and "r" not in quote.group(1).lower():
            body = text[quote.end() :].replace("\\\\", "\\")  # a raw string needs one
            text = "r" + quote.group(0) + body
        source = source[:start] + text + source[end:]
    lines = source.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.lstrip().startswith("#:"):
            lines[i] = LITERAL.sub(lambda m: f"`{m.group(1)}`", ROLE.sub(_role, line))
    return "".join(lines)


def main(paths: list[str]) -> int:
    """Convert each file in place; list the directives left to convert by hand."""
    left = 0
    for name in paths:
        path = Path(name)
        source = convert_source(path.read_text(encoding="utf-8"))
        path.write_text(source, encoding="utf-8")
        for match in DIRECTIVE.finditer(source):
            left += 1
            print(f"{name}:{source.count(chr(10), 0, match.start()) + 1}: convert by hand")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
