"""The registry of glow-sample modes: a new mode is one function and one entry."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import one_line_error, run_console
from torchvision.utils import save_image

from glow_train.cli import sample_main
from glow_train.sampling import MODES, Written, run_mode


def noise_strip(ckpt, *, n=None, seed=None, out=None) -> Written:
    """A toy mode: ``n`` squares of uniform noise in one strip (no model needed)."""
    n, seed = n or 3, seed or 0
    path = Path(out or Path(ckpt).parent / "noise.png")
    images = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    save_image(images, path, nrow=n, padding=0)
    return Written([path], [f"{n} squares of noise, seed {seed}"])


def test_a_registered_mode_runs_from_the_command_line(monkeypatch, tmp_path):
    monkeypatch.setitem(MODES, "noise", noise_strip)
    out = tmp_path / "strip.png"
    status, stdout, stderr = run_console(
        sample_main, [f"ckpt={tmp_path / 'any.pt'}", "mode=noise", "n=5", f"out={out}"], tmp_path
    )
    assert status == 0, stderr
    # the files first, one per line, then the notes; the mode got only what it names
    assert stdout.splitlines() == [str(out), "5 squares of noise, seed 0"]
    assert out.is_file()


def test_run_mode_passes_each_mode_the_options_it_takes(monkeypatch, tmp_path):
    seen = {}

    def listing(ckpt, *, steps=None, y=None):
        seen.update(ckpt=ckpt, steps=steps, y=y)
        return [tmp_path / "a.png", tmp_path / "b.png"]  # a list of paths is fine too

    monkeypatch.setitem(MODES, "listing", listing)
    written = run_mode("listing", "x.pt", {"steps": 4, "n": 9, "alpha": [1], "y": None})
    assert seen == {"ckpt": "x.pt", "steps": 4, "y": None}
    assert written.paths == [tmp_path / "a.png", tmp_path / "b.png"] and written.notes == []


def test_an_unknown_mode_names_the_registered_ones(tmp_path):
    line = one_line_error(sample_main, ["ckpt=x.pt", "mode=warp"], tmp_path, "glow-sample")
    assert (
        "mode must be one of sample, interpolate, direction, manipulate, forecast, got 'warp'"
        in line
    )


def test_a_registered_backtest_runs_from_the_command_line(monkeypatch, tmp_path):
    """glow-eval's backtest= registry takes a new entry the same way."""
    from glow_train.cli import eval_main
    from glow_train.series.registry import BACKTESTS

    monkeypatch.setitem(BACKTESTS, "noise", noise_strip)
    out = tmp_path / "strip.png"
    args = [f"ckpt={tmp_path / 'any.pt'}", "backtest=noise", "seed=4", f"out={out}"]
    status, stdout, stderr = run_console(eval_main, args, tmp_path)
    assert status == 0, stderr
    assert stdout.splitlines() == [str(out), "3 squares of noise, seed 4"]
    line = one_line_error(eval_main, ["ckpt=x.pt", "backtest=warp"], tmp_path, "glow-eval")
    assert "backtest='warp': choose one of var, noise" in line
