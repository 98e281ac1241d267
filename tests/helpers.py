"""Shared test utilities (imported by the test modules)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def perturb(module: nn.Module, scale: float = 0.1, seed: int = 0) -> nn.Module:
    """Move every parameter away from its initial value.

    Zero-initialised layers (coupling outputs, priors) make many bugs invisible:
    a wrong log-determinant of an identity map is still zero.
    """
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def brute_force_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """``log|det J|`` of ``fn`` at each sample of ``x`` via the full Jacobian, float64.

    ``fn`` maps a batch ``(B, ...)`` to a batch ``(B, ...)`` of the same total size
    per sample; each sample's Jacobian is ``(D, D)``.
    """
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].detach()

        def flat(v, xi=xi):
            return fn(v.view_as(xi)).reshape(-1)

        jac = torch.autograd.functional.jacobian(flat, xi.reshape(-1), vectorize=True)
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign != 0
        out.append(logabs)
    return torch.stack(out)


def run_console(main, args: list[str], cwd) -> tuple[int, str, str]:
    """Run a console-script entry point (``glow_train.cli.train_main``, ...) in this
    process, as the installed script would run it from ``cwd``; returns
    ``(exit status, stdout, stderr)``. Much faster than a subprocess (no imports)."""
    import io
    import os
    import sys
    from contextlib import redirect_stderr, redirect_stdout

    old_argv, old_cwd = sys.argv, os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [main.__name__, *map(str, args)]
    os.chdir(cwd)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main()
                status = 0
            except SystemExit as exit_:
                code = exit_.code
                status = code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    return status, out.getvalue(), err.getvalue()


def one_line_error(main, args: list[str], cwd, prog: str = "glow-train") -> str:
    """Run a console entry point that must fail on bad input: exit status 2 and exactly
    one line ``<prog>: error: ...`` on stderr, which is returned."""
    status, out, err = run_console(main, args, cwd)
    assert status == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


def snapshot(folder) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): compare two to prove nothing
    was written, replaced or lost."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def glow_train_cmd() -> str:
    """The installed ``glow-train`` console script of this environment."""
    import sys
    from pathlib import Path

    path = Path(sys.executable).parent / "glow-train"
    assert path.exists(), "glow-train is not installed in this environment"
    return str(path)


def start_glow_train(args: list[str], cwd, wait_for=None, then: float = 0.0):
    """``glow-train args`` started in ``cwd`` as its own process (stdout and stderr piped,
    text); when ``wait_for`` is given, returns once that path exists (at most 120 s) and
    ``then`` seconds more, e.g. once the run's ``tb`` folder shows it is training."""
    import subprocess
    import time

    proc = subprocess.Popen(
        [glow_train_cmd(), *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if wait_for is not None:
        deadline = time.monotonic() + 120
        while not wait_for.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    time.sleep(then)
    return proc
