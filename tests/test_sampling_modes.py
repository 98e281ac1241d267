"""The registry of glow-sample modes: a new mode is one function and one entry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import one_line_error, run_console
from torchvision.utils import save_image

from glow_train.cli import sample_main
from glow_train.errors import ConfigError
from glow_train.modes import command_mode
from glow_train.sampling import MODES, Written, run_mode


def noise(ckpt, opts, n=None) -> Written:
    """A toy mode: `n` squares of uniform noise in one strip (no model needed)."""
    n, seed = n or opts.n, opts.seed or 0
    path = Path(opts.out or Path(ckpt).parent / "noise.png")
    images = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    save_image(images, path, nrow=n, padding=0)
    return Written([path], [f"{n} squares of noise, seed {seed}"])


noise_strip = command_mode("sample", "mode=noise", ("n", "seed", "out"))(noise)
noise_backtest = command_mode("eval", "backtest=noise", ("seed", "out"))(
    lambda ckpt, opts: noise(ckpt, opts, n=3)
)


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


def test_run_mode_passes_the_options_as_one_checked_object(monkeypatch, tmp_path):
    seen = {}

    @command_mode("sample", "mode=listing", ("steps", "y"))
    def listing(ckpt, opts):
        seen.update(ckpt=ckpt, steps=opts.steps, y=opts.y, n=opts.n)
        return [tmp_path / "a.png", tmp_path / "b.png"]  # a list of paths is fine too

    monkeypatch.setitem(MODES, "listing", listing)
    written = run_mode("listing", "x.pt", {"steps": 4, "n": 9, "alpha": [1], "y": None})
    assert seen == {"ckpt": "x.pt", "steps": 4, "y": None, "n": 9}  # the YAML's y, given n
    assert written.paths == [tmp_path / "a.png", tmp_path / "b.png"] and written.notes == []
    # a keyword call builds the same object from configs/sample.yaml and the overrides
    listing("y.pt", steps=3)
    assert seen == {"ckpt": "y.pt", "steps": 3, "y": None, "n": 64}
    # a value out of range is one line naming the option; an option the mode does not
    # use is refused from Python as from the command line
    with pytest.raises(ConfigError, match="steps must be an integer >= 2, got 1"):
        listing("y.pt", steps=1)
    with pytest.raises(
        ConfigError, match=r"n= is not an option of mode=listing \(it takes steps, y\)"
    ):
        listing("y.pt", n=3)
    with pytest.raises(ConfigError, match="n= is not an option of mode=listing"):
        run_mode("listing", "x.pt", {"n": 9}, typed=["n"])


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

    monkeypatch.setitem(BACKTESTS, "noise", noise_backtest)
    out = tmp_path / "strip.png"
    args = [f"ckpt={tmp_path / 'any.pt'}", "backtest=noise", "seed=4", f"out={out}"]
    status, stdout, stderr = run_console(eval_main, args, tmp_path)
    assert status == 0, stderr
    assert stdout.splitlines() == [str(out), "3 squares of noise, seed 4"]
    line = one_line_error(eval_main, ["ckpt=x.pt", "backtest=warp"], tmp_path, "glow-eval")
    assert "backtest='warp': choose one of var, noise" in line
