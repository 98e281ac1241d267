"""Every option a command accepts is used by the mode it runs, or refused in one line.

The options are enumerated from the schemas (`SampleConfig`, `EvalConfig`), the modes
from the registries: an option a mode does not declare is refused through the
console entry point (exit status 2, one line naming the option as typed); the options
a mode declares are exactly those it reads when it runs on a real checkpoint.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
from helpers import run_console

from glow_train import modes
from glow_train.cli import eval_main, sample_main, train_main
from glow_train.config import packaged_defaults
from glow_train.evaluation.figures import evaluate
from glow_train.evaluation.ood import evaluate_ood
from glow_train.sampling import MODES
from glow_train.series.registry import BACKTESTS

#: per command: its entry point, and each mode with the arguments that choose it
COMMANDS = {
    "sample": (sample_main, {mode: (MODES[mode], [f"mode={mode}"]) for mode in MODES}),
    "eval": (
        eval_main,
        {
            "plain": (evaluate, []),
            "ood": (evaluate_ood, ["ood=digits"]),
            **{f"backtest={n}": (BACKTESTS[n], [f"backtest={n}"]) for n in BACKTESTS},
        },
    ),
}
#: keys that choose the checkpoint or the mode rather than set an option
SELECTORS = {"ckpt", "mode", "backtest", "model"}


def _options(command: str) -> list[str]:
    return [f.name for f in fields(modes.COMMANDS[command]) if f.name not in SELECTORS]


def _typed(command: str, name: str) -> str:
    """A command-line override that sets `name` to a valid value other than its default."""
    entry = next(f for f in fields(modes.COMMANDS[command]) if f.name == name)
    default = packaged_defaults(command, modes.COMMANDS[command])[name]
    choices = entry.metadata.get("check", {}).get("choices")
    if name == "dataset":
        return "dataset.root=/elsewhere"
    if choices:
        return f"{name}={next(c for c in choices if c != default)}"
    if isinstance(default, bool):
        return f"{name}={str(not default).lower()}"
    return f"{name}=3"  # an integer, a number, a name or one value of a list


CASES = [
    (command, mode, name)
    for command, (_, table) in COMMANDS.items()
    for mode, (function, _) in table.items()
    for name in _options(command)
    if name not in function.uses and not (mode == "plain" and name == "ood")
]


@pytest.mark.parametrize("command, mode, name", CASES)
def test_an_option_a_mode_does_not_use_is_refused_in_one_line(command, mode, name, tmp_path):
    main, table = COMMANDS[command]
    function, chooser = table[mode]
    typed = _typed(command, name)
    status, out, err = run_console(main, ["ckpt=any.pt", *chooser, typed], tmp_path)
    key = typed.split("=", 1)[0]
    assert status == 2 and len(err.strip().splitlines()) == 1, (out, err)
    assert f"{key}= is not an option of {function.label} (it takes " in err, err
    assert list(tmp_path.iterdir()) == []


def test_every_mode_is_enumerated_and_declares_only_options_of_its_command():
    assert set(COMMANDS["sample"][1]) == set(MODES)
    assert {f"backtest={n}" for n in BACKTESTS} < set(COMMANDS["eval"][1])
    for command, (_, table) in COMMANDS.items():
        for function, _ in table.values():
            assert function.command == command
            assert set(function.uses) <= set(_options(command)), function.label
    # the refusals cover every option not used: at least one per mode of each command
    assert {(c, m) for c, m, _ in CASES} == {(c, m) for c, (_, t) in COMMANDS.items() for m in t}


class Recorder:
    """An options object that notes each option the mode reads."""

    def __init__(self, opts):
        self.__dict__.update(opts_=opts, read=set())

    def __getattr__(self, name):
        self.read.add(name)
        return getattr(self.opts_, name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny digits run and a tiny series model with a context."""
    folder = tmp_path_factory.mktemp("options")
    short = ["train.max_steps=5", "train.progress=false", "device=cpu", "precision=fp32"]
    short += ["train.time_limit=null", "train.eval_every_steps=null", "train.sample_every=null"]
    image = ["model.K=1", "model.hidden_channels=8", *short, "run_dir=digits"]
    prices = 100 * np.exp(np.cumsum(0.01 * np.random.default_rng(0).standard_normal(300)))
    np.savetxt(folder / "p.csv", prices[:, None], header="close", comments="", fmt="%.6f")
    series = ["dataset=csv", "dataset.path=p.csv", "dataset.transform=log_return"]
    series += ["dataset.window=1", "dataset.context=4", *short, "run_dir=series"]
    for args in (image, series):
        status, _, err = run_console(train_main, args, folder)
        assert status == 0, err
    return folder / "digits" / "last.pt", folder / "series" / "last.pt"


def test_each_mode_reads_exactly_the_options_it_declares(runs, tmp_path, monkeypatch):
    image, series = runs
    seen = []

    def recording(*args, **kwargs):
        seen.append(Recorder(real(*args, **kwargs)))
        return seen[-1]

    real = modes.command_options
    monkeypatch.setattr(modes, "command_options", recording)
    calls = [  # each mode on a checkpoint it takes (manipulate after direction)
        (MODES["sample"], image, {}),
        (MODES["interpolate"], image, {"a": 0, "b": 1}),
        (MODES["direction"], image, {"attribute": 0}),
        (MODES["manipulate"], image, {"attribute": 0, "image": 2}),
        (MODES["forecast"], series, {"horizon": 2, "n": 4}),
        (evaluate, image, {"progress": False}),
        (evaluate_ood, image, {"ood": "digits", "ood_train_images": 20, "progress": False}),
        (BACKTESTS["var"], series, {"backtest_samples": 100}),
    ]
    assert {function.label for function, _, _ in calls} == {
        function.label for _, table in COMMANDS.values() for function, _ in table.values()
    }
    for function, ckpt, options in calls:
        out = tmp_path / function.label.replace("=", "_").replace(" ", "_")
        function(ckpt, options={**options, "out": str(out)})
        assert seen[-1].read == set(function.uses), function.label


@pytest.mark.parametrize(
    "main, which, typed, words",
    [
        (eval_main, "series", ["draws=4"], "draws=4 averages over dequantisation noise"),
        (eval_main, "series", ["seed=3"], "seed=3 seeds dequantisation noise"),
        (eval_main, "image", ["class_prior=train"], "class_prior=train is the p(y) of a class"),
        (sample_main, "image", ["layout=rows", "nrow=3"], "nrow=3 sets the images per row"),
    ],
)
def test_an_option_the_input_has_no_use_for_is_refused(runs, tmp_path, main, which, typed, words):
    """Not a figure it cannot change (`standard error over 4 draws: 0`), but one line."""
    ckpt = runs[0] if which == "image" else runs[1]
    status, out, err = run_console(main, [f"ckpt={ckpt}", *typed], tmp_path)
    assert status == 2 and len(err.strip().splitlines()) == 1, (out, err)
    assert words in err and f"leave {typed[-1].split('=')[0]}= out" in err
    assert list(tmp_path.iterdir()) == []
    assert not (ckpt.parent / "eval").exists() and not (ckpt.parent / "samples").exists()
