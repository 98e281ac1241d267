"""Every code block of the README, CONTRIBUTING.md and the docs pages is run or checked.

- ```python blocks run as written (in a temporary folder).
- ```bash blocks: every line is a command; ```console blocks: every line after ``$ ``.
  A ``glow-*`` command (also behind ``torchrun``/``srun``) is composed with
  ``--cfg job`` (``--help`` is run), so a renamed option, group entry or command
  fails here; ``python scripts/...`` must exist and answer ``--help``;
  ``python -c`` runs; ``make <target>``, ``pip install '.[extra]'`` and ``.ci/run``
  must name a target, an extra and a file that exist. A command that matches no
  rule fails the test: give it one.
- The README's quick-start transcript (written by ``scripts/make_figures.py``) is
  replayed on a tiny model, and every line it shows must come out, numbers aside.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_console

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)
COMMANDS = ("glow-train", "glow-sample", "glow-eval")
# Commands of other programs that the pages show; nothing of this project to check.
OTHERS = {"tensorboard", "cat", "head", "cut", "scontrol", "mkdocs", "git", "cd", "ruff"}


def blocks(path: Path) -> list[tuple[str, str, int]]:
    """``(language, text, line number)`` of each fenced code block of a page."""
    text = path.read_text()
    return [
        (m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)
    ]


def shell_commands(language: str, text: str) -> list[str]:
    """The commands of a bash block (every line) or a console block (``$ `` lines)."""
    text = text.replace("\\\n", " ")
    if language == "bash":
        lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    elif language == "console":
        lines = [line[2:] for line in text.splitlines() if line.startswith("$ ")]
    else:
        return []
    return [line.strip() for line in lines if line.strip()]


def _id(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


PYTHON = [
    pytest.param(text, id=_id(path, line))
    for path in PAGES
    if path.exists()
    for language, text, line in blocks(path)
    if language == "python"
]
SHELL = [
    pytest.param(command, id=f"{_id(path, line)}:{command[:40]}")
    for path in PAGES
    if path.exists()
    for language, text, line in blocks(path)
    for command in shell_commands(language, text)
]


def console_main(name: str):
    """The function behind an installed console script (``glow-train`` -> its main)."""
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name=name)
    module, _, attr = entry.value.partition(":")
    return getattr(importlib.import_module(module), attr)


def compose(argv: list[str], cwd: Path) -> None:
    """Compose a glow-* command line with ``--cfg job`` (run ``--help``); fail on error."""
    args = [a for a in argv[1:] if a != "-m"]
    if "-m" in argv[1:]:  # a sweep: compose its first job
        args = [re.sub(r"=([^\[\],]*),[^\[\]]*$", r"=\1", a) for a in args]
    if "--help" not in args and "--cfg" not in args:
        args += ["--cfg", "job"]
    status, out, err = run_console(console_main(argv[0]), args, cwd)
    assert status == 0, f"`{' '.join(argv)}` does not compose:\n{err[-2000:]}"


def check_command(command: str, cwd: Path) -> None:
    command = command.replace("$(which glow-train)", "glow-train")
    argv = shlex.split(command, comments=True)
    tool = argv[0]
    if tool in COMMANDS:
        compose(argv, cwd)
    elif tool in ("torchrun", "srun"):
        start = next(i for i, a in enumerate(argv) if a in COMMANDS)
        compose(argv[start:], cwd)
    elif tool == "python" and argv[1] == "-c":
        subprocess.run([sys.executable, "-c", argv[2]], cwd=cwd, check=True, timeout=120)
    elif tool == "python":
        script = ROOT / argv[1]
        assert script.is_file(), f"{argv[1]} does not exist"
        done = subprocess.run(
            [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
    elif tool == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M)
        assert set(argv[1:]) <= set(targets), f"make {argv[1:]}: not in {targets}"
    elif tool == "pip":
        extras = set(re.findall(r"^(\w+) = \[", (ROOT / "pyproject.toml").read_text(), re.M))
        for arg in argv[2:]:
            for named in re.findall(r"\[([\w,]+)\]", arg):
                assert set(named.split(",")) <= extras, f"{arg}: extras are {sorted(extras)}"
    elif tool == ".ci/run":
        assert os.access(ROOT / ".ci" / "run", os.X_OK)
    else:
        assert tool in OTHERS, f"no check for `{command}`: add a rule to tests/test_docs.py"


def test_every_page_has_something_to_check():
    assert PYTHON and SHELL
    assert all(path.exists() for path in PAGES), "a page named here is missing"


@pytest.mark.parametrize("code", PYTHON)
def test_python_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<docs>", "exec"), {"__name__": "__docs__"})


@pytest.mark.parametrize("command", SHELL)
def test_shell_command_is_valid(command, tmp_path):
    check_command(command, tmp_path)


def _shape(line: str) -> str:
    """A printed line with what varies between runs and machines replaced."""
    line = re.sub(r"\b(fp32|bf16|fp16)\b", "P", line)
    # precision=auto names what it chose on this machine's CPU or GPU
    line = re.sub(r"precision auto -> P \([^)]*\)", "P", line)
    line = re.sub(r"device \S+,", "device D,", line)
    return re.sub(r"-?\d[\d,.]*(e-?\d+)?", "N", line)


def test_the_readme_quick_start_prints_what_it_shows(tmp_path):
    """Replay the transcript on a tiny model: each shown line must come out (numbers aside)."""
    text = README.read_text()
    block = text.split("<!-- quickstart:start -->", 1)[1].split("<!-- quickstart:end -->")[0]
    (_, transcript, _), *_ = blocks_of(block)
    tiny = ["train.max_steps=3", "model.K=2", "model.hidden_channels=8", "train.progress=false"]
    printed: list[str] = []
    shown: list[str] = []
    for line in transcript.splitlines():
        if line.startswith("$ "):
            argv = shlex.split(line[2:])
            extra = tiny if argv[0] == "glow-train" else []
            status, out, err = run_console(console_main(argv[0]), argv[1:] + extra, tmp_path)
            assert status == 0, err
            printed += [_shape(x) for x in out.splitlines()]
        elif line != "...":
            shown.append(_shape(line))
    missing = [line for line in shown if line not in printed]
    assert not missing, f"the README shows lines the commands no longer print: {missing}"


def blocks_of(text: str) -> list[tuple[str, str, int]]:
    return [(m.group(1), m.group(2), 0) for m in FENCE.finditer(text)]


def test_the_readme_is_short_and_its_links_resolve():
    assert len(README.read_text().splitlines()) <= 300
    for page in (README, ROOT / "CONTRIBUTING.md"):
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


REFERENCE = ROOT / "docs" / "reference"


def reference_modules() -> set[str]:
    """The modules the API reference pages show (`::: glow_train.x.y` entries)."""
    return {
        name
        for page in REFERENCE.glob("*.md")
        for name in re.findall(r"^::: ([\w.]+)", page.read_text(), re.M)
    }


def package_modules() -> list[str]:
    """Every module of the package, `glow_train.training.loop` for training/loop.py."""
    package = ROOT / "glow_train"
    return sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in package.rglob("*.py")
    )


def _undocumented(module) -> list[str]:
    """Public classes, functions, methods and properties of `module` without a docstring."""
    missing = []
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj) and not (obj.__doc__ or "").strip():
            missing.append(name)
        if inspect.isclass(obj):
            doc = obj.__doc__ or ""
            if not doc.strip() or doc.startswith(f"{name}("):  # a dataclass's generated one
                missing.append(name)
            for attr, member in vars(obj).items():
                member = getattr(member, "__func__", member)  # static and class methods
                if attr.startswith("_") or not (
                    inspect.isfunction(member) or isinstance(member, property)
                ):
                    continue
                if inspect.isfunction(member) and member.__name__ != attr:
                    continue  # a field's default (another function), not a method
                if not (member.__doc__ or "").strip():
                    missing.append(f"{name}.{attr}")
    return missing


def test_the_api_reference_shows_every_module():
    """One page per area: a new module goes on the page of its area."""
    shown = reference_modules()
    assert not set(package_modules()) - shown, "modules on no page of docs/reference/"
    assert not shown - set(package_modules()) - {"glow_train"}, "pages name missing modules"


def test_the_api_reference_shows_each_object_once():
    """A name a module re-exports in `__all__` is shown where it is defined: its entry
    on the reference page filters it out."""
    for page in REFERENCE.glob("*.md"):
        entries = re.findall(r"^::: ([\w.]+)\n((?:    .*\n)*)", page.read_text(), re.M)
        for name, options in entries:
            if "members: false" in options:
                continue
            module = importlib.import_module(name)
            hidden = set(re.findall(r"!\^(\w+)\$", options))
            for exported in getattr(module, "__all__", []):
                obj = getattr(module, exported)
                defined = getattr(obj, "__module__", name)
                if (inspect.isclass(obj) or inspect.isfunction(obj)) and defined != name:
                    assert exported in hidden, f"{page.name}: {name}.{exported} shown twice"


def test_every_public_object_has_a_docstring():
    """The reference renders what has a docstring: a public object without one would be
    missing from it (the layer contract's `forward`/`inverse` included)."""
    missing = {}
    for name in package_modules():
        found = _undocumented(importlib.import_module(name))
        if found:
            missing[name] = found
    assert not missing, f"public objects without a docstring: {missing}"


def _no_rest():
    spec = importlib.util.spec_from_file_location("no_rest", ROOT / "docs" / "hooks" / "no_rest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docstrings_hold_no_restructuredtext():
    """The check `make docs` runs (docs/hooks/no_rest.py): Markdown docstrings only."""
    problems = _no_rest().check()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "docstring",
    [
        "See :func:`load`.",
        "See :py:meth:`Glow.sample`.",
        r"Bits :math:`\log 2`.",
        "Display:\n\n.. math::  x = 1\n",
        ".. note:: careful",
        "Mangled:\n\n.. math:\n    x = 1\n",
        "The ``ckpt`` option.",
        "A block::\n\n    code\n",
        "A `link <https://example.org>`_.",
    ],
)
def test_the_restructuredtext_check_finds_each_kind(docstring):
    source = f'def f():\n    r"""{docstring}"""\n\n\nX = 1\nr"""Also:\n\n{docstring}"""\n'
    found = _no_rest().rest_markup(source)
    assert len(found) == 2, found  # the function's docstring and the attribute's


def test_the_restructuredtext_check_passes_markdown():
    source = '''r"""Google style: `name`, [load][glow_train.load], $\\log p$ and

$$
x = 1
$$

Example:
    ```python
    glow_train.load("run")
    ```
"""
'''
    assert _no_rest().rest_markup(source) == []


GUIDE = ROOT / "docs" / "guide"


def composed(argv: list[str], tmp_path: Path) -> dict:
    """The configuration `glow-train <argv>` composes (its `--cfg job` output)."""
    import yaml

    status, out, err = run_console(console_main("glow-train"), [*argv, "--cfg", "job"], tmp_path)
    assert status == 0, err
    return yaml.safe_load(out)


def test_the_training_guide_names_each_presets_dequantisation(tmp_path):
    """The guide's table of `train.dequantization` is what each dataset composes."""
    text = (GUIDE / "training.md").read_text()
    default = re.search(r"default of `configs/train.yaml` is `(\w+)`", text).group(1)
    assert composed(["dataset=folder"], tmp_path)["train"]["dequantization"] == (default)
    rows = re.findall(r"^\| `(\w+)`[^|]*\| (`(\w+)`|none)", text, re.M)
    assert len(rows) >= 5
    for dataset, shown, value in rows:
        cfg = composed([f"dataset={dataset}"], tmp_path)
        if shown == "none":  # continuous data: no dequantiser, whatever the key says
            assert cfg["model"]["name"] == "glow1d", dataset
        else:
            assert cfg["train"]["dequantization"] == value, dataset


def _block(text: str, name: str) -> str:
    return text.split(f"<!-- {name}:start -->", 1)[1].split(f"<!-- {name}:end -->")[0]


def test_the_training_guide_shows_the_transcript_of_the_readme():
    """Both are written by scripts/make_figures.py from the same run: the guide's lines
    are the README's first command and what it printed."""
    guide = _block((GUIDE / "training.md").read_text(), "transcript")
    readme = _block(README.read_text(), "quickstart")
    assert guide.strip() and guide.replace("```\n", "") in readme


def test_the_citation_file_and_the_readme_cite_the_glow_paper():
    import yaml

    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert {"cff-version", "message", "title", "authors", "preferred-citation"} <= set(cff)
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert str(cff["version"]) == version.group(1), "CITATION.cff: the version of pyproject.toml"
    title = cff["preferred-citation"]["title"]
    for page in (README, ROOT / "docs" / "index.md"):
        assert f"title     = {{{title}}}" in page.read_text(), f"{page.name}: no BibTeX of Glow"


def _troubleshooting_lines() -> list[str]:
    """The first column of the troubleshooting page's tables: the lines it quotes."""
    text = (GUIDE / "troubleshooting.md").read_text()
    return re.findall(r"^\| `(.+?)` \|", text, re.M)


def test_the_troubleshooting_page_quotes_the_code():
    """Each quoted line is one of glow_train's messages (its literal parts, around `<...>`
    and `...`, with the values a message fills in), or, for the three that Hydra's
    messages make, what the command prints (below)."""
    source = "".join(path.read_text() for path in (ROOT / "glow_train").rglob("*.py"))
    source = re.sub(r"\"\s*\n\s*f?\"", "", source)  # join implicitly concatenated strings
    source = re.sub(r"\{[^{}]*\}", "\0", source)  # f-string fields: what varies
    templates = [
        re.compile(re.escape(text).replace("\0", ".+?"))
        for text in re.findall(r'"([^"\n]*\0[^"\n]*)"', source)
        if len(text.replace("\0", "")) >= 12
    ]
    lines = _troubleshooting_lines()
    assert len(lines) >= 15
    from_hydra = [line for line in lines if "Could not" in line or "Value '" in line]
    for line in set(lines) - set(from_hydra):
        for part in re.split(r"<[^>]*>|\.\.\.", line):
            part = part.strip(" ;,()")
            words = part.split(" ")  # a value next to a placeholder: one word either side
            trimmed = {" ".join(words[i : len(words) - j]) for i in (0, 1) for j in (0, 1)}
            if len(part) >= 12 and not any(len(t) >= 12 and t in source for t in trimmed):
                assert any(t.search(part) for t in templates), f"{part!r} is not in glow_train/"
    assert len(from_hydra) == 3


@pytest.mark.parametrize("argv", [["train.lrr=1"], ["train.lr=abc"], ["dataset=cifar"]])
def test_the_troubleshooting_page_shows_what_hydra_errors_print(argv, tmp_path):
    status, _, err = run_console(console_main("glow-train"), argv, tmp_path)
    assert status == 2
    printed = err.strip().splitlines()[-1].removeprefix("glow-train: error: ")
    assert printed in _troubleshooting_lines(), printed


def test_the_converter_leaves_no_restructuredtext_but_directives():
    """docs/hooks/rest_to_markdown.py, for a file that still has Sphinx markup."""
    spec = importlib.util.spec_from_file_location(
        "rest_to_markdown", ROOT / "docs" / "hooks" / "rest_to_markdown.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    source = (
        'def f():\n    """The :math:`\\\\log p` of :class:`~glow_train.models.Glow`, ``x``::\n\n'
        '        code\n\n    .. math::\n        y = 1\n    """\n'
    )
    converted = tool.convert_source(source)
    assert converted.startswith('def f():\n    r"""The $\\log p$ of `Glow`, `x`:\n')
    found = {what for _, what in _no_rest().rest_markup(converted)}
    assert len(found) == 1 and "directive" in next(iter(found)), found  # left for a person
