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


def test_the_api_reference_names_documented_objects():
    """mkdocs build --strict fails on a name that does not exist; this on a missing docstring."""
    names = re.findall(r"^::: ([\w.]+)", (ROOT / "docs" / "reference.md").read_text(), re.M)
    assert len(names) > 30
    for name in names:
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError:
            module, _, attr = name.rpartition(".")
            obj = getattr(importlib.import_module(module), attr)
        assert (obj.__doc__ or "").strip(), f"{name} has no docstring"
