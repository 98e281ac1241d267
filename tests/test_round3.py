"""Issue 34 (reliability, third round), through the entry points: each case ends in the
right exit status and one line, with nothing written or lost that should not be."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import one_line_error, run_console, snapshot
from PIL import Image
from test_table import SHORT, gaussian_rows, write_csv

from glow_train.cli import sample_main, train_main
from glow_train.data import loader
from glow_train.training.sizing import describe_chosen

QUIET = ["train.time_limit=null", "train.progress=false", "train.eval_every_steps=null"]
QUIET += ["train.sample_every=null", "train.num_samples=4"]


# 8. the loader's worker processes follow the cores ---------------------------------------


@pytest.mark.parametrize(("cores", "workers"), [(1, 0), (2, 1), (3, 2), (16, 4)])
def test_auto_workers_follow_the_cores_available(monkeypatch, cores, workers):
    monkeypatch.setattr(loader.os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert loader.resolve_workers("auto") == workers
    assert loader.resolve_workers(3) == 3 and loader.resolve_workers(None) == 0


@pytest.mark.parametrize("workers", ["auto", "cores + 1"])
def test_an_image_folder_trains_without_the_worker_warning(tmp_path, recwarn, workers):
    """The image datasets' default `num_workers: auto` never asks for more processes than
    the machine has cores: no DataLoader warning ("will create 4 worker processes")."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(24):
        Image.new("L", (10, 10), 10 * i).save(images / f"{i}.png")
    args = ["dataset=folder", f"dataset.root={images}", "dataset.image_size=8"]
    args += ["dataset.channels=1", "dataset.batch_size=4", "dataset.val_size=0"]
    args += ["model.K=1", "model.L=1", "model.hidden_channels=8", "train.max_steps=2"]
    args += ["train.init_samples=4", *QUIET, "run_dir=run"]
    if workers != "auto":  # the peer: more processes than cores, as `4` on 2 cores
        args.append(f"dataset.num_workers={len(os.sched_getaffinity(0)) + 1}")
    status, out, err = run_console(train_main, args, tmp_path)
    assert status == 0, err
    warned = [str(w.message) for w in recwarn if "worker processes" in str(w.message)]
    assert bool(warned) == (workers != "auto"), warned


# 8. the series pictures: ticks at round numbers, words apart, the VaR level named --------


def test_round_ticks_lie_in_the_range_at_round_steps():
    from glow_train.series.chart import round_ticks

    assert round_ticks(-0.047, 0.049) == [-0.04, -0.02, 0.0, 0.02, 0.04]
    assert round_ticks(0, 299, most=8) == [0, 50, 100, 150, 200, 250]
    assert round_ticks(83.2, 103.9) == [85, 90, 95, 100]
    assert round_ticks(1.0, 1.0) == [1.0]


@pytest.mark.parametrize("size", [12, None])  # PIL's scalable font, and its bitmap one
def test_chart_text_keeps_words_apart_in_either_font(monkeypatch, size):
    from PIL import Image, ImageDraw, ImageFont

    from glow_train.series import chart

    face = ImageFont.load_default() if size is None else ImageFont.load_default(size=size)
    monkeypatch.setattr(chart, "font", lambda size=12: face)
    draw = ImageDraw.Draw(Image.new("RGB", (300, 40), "white"))
    joined = chart.text(draw, (0, 0), "exceedancesofglow1d")
    apart = chart.text(draw, (0, 0), "exceedances of glow1d")
    assert apart - joined >= 2 * max(draw.textlength("n", font=face), 4.0) - 1


# 6. messages that name the real cause ----------------------------------------------------


def test_a_semicolon_file_names_the_delimiter_to_set_and_that_setting_works(tmp_path):
    rows = [";".join(f"{v:.5f}" for v in row) for row in gaussian_rows(80)]
    (tmp_path / "semi.csv").write_text("a;b;c\n" + "\n".join(rows) + "\n")
    before = snapshot(tmp_path)
    line = one_line_error(train_main, ["dataset=csv", "dataset.path=semi.csv", *SHORT], tmp_path)
    assert line.endswith(
        "semi.csv has no numeric column; its lines look ;-separated: set "
        "dataset.delimiter=';' (the delimiter now is ',')"
    )
    assert snapshot(tmp_path) == before
    # typed as a user would (Hydra reads a bare ; as syntax): taken as the character
    args = ["dataset=csv", "dataset.path=semi.csv", "dataset.delimiter=;", *SHORT]
    status, out, err = run_console(train_main, [*args, "train.max_steps=1", "run_dir=r"], tmp_path)
    assert status == 0, err
    assert "3 dimensions" in out or "(a, b, c)" in out or "train /" in out


def test_numbers_with_thousands_separators_name_their_column(tmp_path, recwarn):
    rows = [
        [f"{v:.4f}" for v in row[:2]] + [f'"{1000 * (i + 1):,}"']
        for i, row in enumerate(gaussian_rows(80))
    ]
    write_csv(tmp_path / "t.csv", ["a", "b", "volume"], rows)
    args = ["dataset=csv", "dataset.path=t.csv", *SHORT, "train.max_steps=1", "run_dir=r"]
    status, out, err = run_console(train_main, args, tmp_path)
    assert status == 0, err  # trains on a and b, and says why volume is left out
    warned = [str(w.message) for w in recwarn if "left out" in str(w.message)]
    assert warned == [
        "column 'volume' is left out: '1,000' (line 2) is not a number as written (thousands "
        "separators or a decimal comma?); write plain numbers such as 1000.5 to use it"
    ]
    line = one_line_error(
        train_main, [*args[:-1], "dataset.columns=[a,volume]", "run_dir=s"], tmp_path
    )
    assert "column 'volume' is not numeric (line 2: '1,000') (thousands separators" in line
    assert not (tmp_path / "s").exists()


def test_an_infinite_temperature_is_called_infinite(tmp_path):
    line = one_line_error(sample_main, ["ckpt=x.pt", "temperature=inf"], tmp_path, "glow-sample")
    assert line == (
        "glow-sample: error: temperature must be a finite number >= 0, e.g. 0.7; got inf"
    )


# 3. data problems are named in one warning each ------------------------------------------


def data_warnings(recwarn) -> list[str]:
    return [str(w.message) for w in recwarn if "dataset.path=" in str(w.message)]


def train_on(tmp_path, csv, *extra, steps=2):
    args = ["dataset=csv", f"dataset.path={csv}", *SHORT, *extra, f"train.max_steps={steps}"]
    return run_console(train_main, [*args, f"run_dir={tmp_path / 'run'}"], tmp_path)


def test_a_long_constant_stretch_of_a_series_is_named(tmp_path, recwarn):
    rng = np.random.default_rng(0)
    prices = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, 1000)))
    prices[300:800] = prices[300]  # 500 days at one price: 499 log-returns of 0
    csv = write_csv(tmp_path / "p.csv", ["close"], [[p] for p in prices])
    status, out, err = train_on(tmp_path, csv, "dataset.window=4", "dataset.transform=log_return")
    assert status == 0, err
    assert data_warnings(recwarn) == [
        f"dataset.path={csv}: column 'close' holds 499 identical values in a row (0, data rows "
        "301-799 of 999); the density grows a spike there and its figures mislead: remove "
        "that stretch (e.g. days a market was closed) from the file"
    ]


def test_repeated_rows_are_kept_on_one_side_of_the_split(tmp_path, recwarn):
    from glow_train.data.table import load_table

    rows = np.round(gaussian_rows(100), 6)
    csv = write_csv(tmp_path / "t.csv", ["a", "b", "c"], [*rows, *rows, *rows])
    status, out, err = train_on(tmp_path, csv)
    assert status == 0, err
    assert data_warnings(recwarn) == [
        f"dataset.path={csv}: 200 of 300 rows repeat other rows (100 groups of identical "
        "rows); each group is kept whole in one of the test, validation and training parts, "
        "so no row is scored against a copy of itself"
    ]
    cfg = {"path": str(csv), "test_size": 0.2, "val_size": 0.1, "split_seed": 0}
    parts = load_table(cfg).parts
    seen = {name: {tuple(r) for r in part} for name, part in parts.items()}
    assert not seen["test"] & seen["train"] and not seen["val"] & seen["train"]
    assert not seen["test"] & seen["val"]
    assert sum(len(p) for p in parts.values()) == 300 and len(parts["test"]) % 3 == 0


def test_a_value_far_beyond_the_rest_is_named(tmp_path, recwarn):
    rows = gaussian_rows(200)
    rows[17, 1] = 1e6 * abs(rows[:, 1]).max()
    csv = write_csv(tmp_path / "t.csv", ["a", "b", "c"], rows)
    status, out, err = train_on(tmp_path, csv)
    assert status == 0, err
    (line,) = data_warnings(recwarn)
    assert line.startswith(
        f"dataset.path={csv}: column 'b' has 1 value(s) more than 100 robust standard "
        "deviations from its median (the farthest "
    )
    assert line.endswith(
        ", data row 18); a unit or typing error? It dominates the scale the "
        "model learns: fix or remove it"
    )


def test_clean_data_gives_no_warning(tmp_path, recwarn):
    csv = write_csv(tmp_path / "t.csv", ["a", "b", "c"], gaussian_rows(200))
    status, out, err = train_on(tmp_path, csv)
    assert status == 0, err
    assert data_warnings(recwarn) == []


def test_too_few_rows_for_a_batch_are_refused(tmp_path):
    csv = write_csv(tmp_path / "t.csv", ["a", "b"], [[1.0, 2.0], [2.5, 1.0], [0.3, 0.7]])
    before = snapshot(tmp_path)
    line = one_line_error(
        train_main,
        [
            "dataset=csv",
            f"dataset.path={csv}",
            *SHORT,
            "train.max_steps=2",
            "dataset.test_size=1",
            "dataset.val_size=0",
            "run_dir=run",
        ],
        tmp_path,
    )
    assert line == (
        "glow-train: error: 2 training items per process, fewer than the 8 a run needs "
        "(dataset.batch_size=32 would be cut to 2); add data, or hold fewer items out for "
        "validation and test"
    )
    assert snapshot(tmp_path) == before


# 4. the vector sizing rules cap the step budget -------------------------------------------


@pytest.mark.parametrize(
    ("n", "dims", "planned", "capped"),
    [(35_000, 20, 23_700, 900), (14_000, 20, 15_000, 2_400), (7_000, 10, 10_600, 5_100)],
)
def test_the_work_budget_caps_the_auto_step_budget(n, dims, planned, capped):
    from hydra import compose, initialize_config_module

    from glow_train.training.sizing import resolve_auto

    with initialize_config_module("glow_train.configs", version_base="1.3"):
        cfg = compose("train", ["dataset=csv", "dataset.path=x.csv"])
    plain, chosen = resolve_auto(cfg, n)  # without the item's size: no cap
    assert chosen["train.max_steps"] == planned
    resolved, chosen = resolve_auto(cfg, n, dims=dims)
    assert resolved.train.max_steps == capped and type(resolved.train.max_steps) is int
    assert f"train.max_steps={capped} (capped from {planned:,} by" in describe_chosen(chosen)
    _, small = resolve_auto(cfg, 700, dims=3)  # a small table keeps its rule's value
    assert small["train.max_steps"] == 3300 and "capped" not in describe_chosen(small)


@pytest.mark.slow  # about a minute alone: reads and trains on a 20,000-row table
def test_a_large_table_plans_minutes_not_hours_and_says_why(tmp_path):
    """A 50,000 x 20 table with the defaults planned 23,700 steps of batch 768 (3-4.5 hours
    on 2 cores); the work budget caps the steps, and the start-up line says so (here
    20,000 x 20, which planned 15,000 steps)."""
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((20_000, 20)) @ rng.standard_normal((20, 20))
    np.savetxt(tmp_path / "big.csv", rows, delimiter=",", fmt="%.5f")
    args = ["dataset=csv", "dataset.path=big.csv", "train.time_limit=1s"]
    args += ["train.progress=false", "run_dir=run"]
    status, out, err = run_console(train_main, args, tmp_path)
    assert status == 0, err
    start = out.splitlines()[0]
    assert "dataset.batch_size=480" in start, start
    assert (
        "train.max_steps=2400 (capped from 15,000 by sizing.train.work_budget=2e11, so that "
        "the run takes minutes on a CPU; set train.max_steps to train longer)"
    ) in start, start
