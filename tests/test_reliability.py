"""Bad input and broken runs, tried as a user would: each ends in one line, exit status
2 (130 for Ctrl-C), and nothing written that should not be."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import one_line_error, run_console, snapshot
from omegaconf import OmegaConf
from PIL import Image
from test_train import TINY, compose_train

from glow_train.cli import eval_main, sample_main, train_main
from glow_train.data import dataset_names
from glow_train.io.checkpoint import load_checkpoint, save_checkpoint
from glow_train.runtime.distributed import DistInfo
from glow_train.training import Trainer, TrainingDiverged, train
from glow_train.training.run_dir import LOCK_NAME


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny finished run (3 steps): its folder."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train(compose_train(*TINY, "train.max_steps=3", f"run_dir={run_dir}"))
    return run_dir


@pytest.fixture
def broken_run(finished_run, tmp_path):
    """A copy of the finished run whose weights (raw and EMA) are NaN: a diverged model."""
    state = load_checkpoint(finished_run / "last.pt")
    for weights in (state["objective"], state["ema"]):
        for key, value in weights.items():
            if key.endswith("top_prior.mean"):
                value.fill_(float("nan"))
    folder = tmp_path / "broken"
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, folder / "last.pt")
    return folder


# 1. every option a run uses is checked before the first step ---------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train.sample_temperatures=[-1]"], "train.sample_temperatures must be one or more"),
        (["train.sample_temperatures=[0.5,abc]"], "Value 'abc' of type 'str' could not be"),
        (["train.sample_temperatures=[]"], "train.sample_temperatures must be one or more"),
        (["train.num_samples=0"], "train.num_samples must be at least 1"),
        (["train.time_limit=soon"], "train.time_limit='soon' is not a duration"),
        (["dataset.eval_batch_size=0"], "dataset.eval_batch_size must be an integer >= 1"),
    ],
)
def test_options_used_at_the_end_are_checked_before_the_start(tmp_path, args, message):
    line = one_line_error(train_main, ["train.max_steps=5", "run_dir=run", *args], tmp_path)
    assert message in line
    assert list(tmp_path.iterdir()) == []


# 2. one run per folder ------------------------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from glow_train.training.run_dir import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_run_folder_in_use_is_refused_and_freed_when_its_holder_dies(tmp_path):
    folder = tmp_path / "same"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = [*TINY, "train.max_steps=2", f"run_dir={folder}"]
        line = one_line_error(train_main, args, tmp_path)
        assert f"in use by another glow-train run (process {holder.pid})" in line
        assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]  # nothing written
    finally:
        holder.kill()  # kill -9: the operating system releases the lock
        holder.wait()
    status, out, err = run_console(train_main, args, tmp_path)
    assert status == 0, err
    assert (folder / "last.pt").is_file() and (folder / "config.yaml").is_file()


# 3. a broken model is never called good ------------------------------------------------


def test_the_issues_diverging_run_names_no_broken_checkpoint(tmp_path):
    args = ["train.max_steps=50", "train.lr=1.0", "train.warmup_steps=10", "train.ckpt_every=2"]
    args += ["model.L=2", "model.K=8"]  # the shape of the issue's run
    line = one_line_error(train_main, [*args, "train.progress=false", "run_dir=run"], tmp_path)
    assert "consecutive steps had a non-finite loss" in line
    assert line.endswith("no good checkpoint was written")
    assert (
        not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "best.pt").exists()
    )


def test_divergence_names_the_last_checkpoint_that_was_good(tmp_path):
    cfg = compose_train(
        *TINY,
        "train.max_steps=40",
        "train.ckpt_every=2",
        "train.max_bad_steps=3",
        "train.ema_decay=null",
    )
    trainer = Trainer(cfg, DistInfo(), tmp_path)
    trainer.prepare()
    real_step = trainer.steps.train_step

    def step_then_break(*args, **kwargs):
        stats = real_step(*args, **kwargs)
        if trainer.step == 5:  # the update of step 5 leaves weights that give NaN
            with torch.no_grad():
                trainer.model.top_prior.mean.fill_(float("nan"))
        return stats

    trainer.steps.train_step = step_then_break  # what the loop calls
    with pytest.raises(TrainingDiverged, match=r"last good checkpoint: .*last.pt \(step 4\)"):
        trainer.fit()
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 4
    assert all(
        torch.isfinite(v).all() for v in state["objective"].values() if v.is_floating_point()
    )


def test_a_broken_checkpoint_is_refused_by_every_command(broken_run, tmp_path):
    ckpt = broken_run / "last.pt"
    before = snapshot(broken_run)
    line = one_line_error(eval_main, [f"ckpt={ckpt}", "progress=false"], tmp_path, "glow-eval")
    assert "gives non-finite bpd for 297 of 297 items (a diverged run)" in line
    line = one_line_error(sample_main, [f"ckpt={ckpt}"], tmp_path, "glow-sample")
    assert "are not finite: the model diverged" in line
    line = one_line_error(train_main, [f"ckpt={ckpt}", "train.max_steps=10"], tmp_path)
    assert "holds a model whose outputs are not finite" in line
    assert snapshot(broken_run) == before  # no eval.json, no PNG, no config.yaml
    assert list(tmp_path.iterdir()) == [broken_run]


# 4. paths ------------------------------------------------------------------------------


def test_image_outputs_take_the_format_their_extension_names(finished_run, tmp_path):
    for name, kind in (("grid.jpg", "JPEG"), ("grid.webp", "WEBP"), ("grid.png", "PNG")):
        status, out, err = run_console(
            sample_main, [f"ckpt={finished_run}", f"out={name}"], tmp_path
        )
        assert status == 0, err
        assert out.strip() == name and Image.open(tmp_path / name).format == kind
        assert f"glow-sample: used {finished_run / 'best.pt'}" in err.splitlines()
    line = one_line_error(
        sample_main, [f"ckpt={finished_run}", "out=grid.txt"], tmp_path, "glow-sample"
    )
    assert "'.txt' is not an image format Pillow writes" in line
    (tmp_path / "notes").write_text("mine")
    line = one_line_error(
        sample_main, [f"ckpt={finished_run}", "out=notes"], tmp_path, "glow-sample"
    )
    assert "out=notes is an existing file; pass a folder or an image file name" in line
    line = one_line_error(eval_main, [f"ckpt={finished_run}", "out=notes"], tmp_path, "glow-eval")
    assert "out=notes is an existing file; pass a folder or a .json file name" in line
    assert (tmp_path / "notes").read_text() == "mine"
    assert not (tmp_path / "grid.txt").exists()


def test_a_run_folder_is_accepted_where_a_checkpoint_is(finished_run, tmp_path):
    status, out, err = run_console(eval_main, [f"ckpt={finished_run}", "out=e.json"], tmp_path)
    assert status == 0 and err.strip().endswith(f"glow-eval: used {finished_run / 'best.pt'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_line_error(eval_main, [f"ckpt={empty}"], tmp_path, "glow-eval")
    assert "is a folder without best.pt or last.pt" in line
    line = one_line_error(train_main, [f"ckpt={empty}"], tmp_path)
    assert "is a folder without last.pt" in line


def test_glow_train_resumes_a_run_folder_from_its_last_checkpoint(finished_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    status, out, err = run_console(train_main, [f"ckpt={run}", "train.max_steps=5"], tmp_path)
    assert status == 0, err
    assert f"resuming {run / 'last.pt'} at step 3" in out
    assert load_checkpoint(run / "last.pt")["step"] == 5


# 5. resuming below the reached step ----------------------------------------------------


def test_resuming_past_the_limit_says_there_is_nothing_to_do(finished_run, tmp_path):
    before = snapshot(finished_run)
    args = [f"ckpt={finished_run / 'last.pt'}", "train.max_steps=2"]
    line = one_line_error(train_main, args, tmp_path)
    assert "nothing to do: " in line and "is at step 3" in line and "train.max_steps=2" in line
    assert snapshot(finished_run) == before  # config.yaml untouched


# 6. Ctrl-C during start-up -------------------------------------------------------------


#: the installed `glow-train` script's own lines, with a line on stderr once its import
#: is done: before that, Python itself is starting (its `site` imports), which no
#: program can guard, and a fixed delay from the launch lands there on a loaded machine
SCRIPT_WITH_READY = (
    "import sys; from glow_train.cli import train_main; "
    "print('ready', file=sys.stderr, flush=True); "
    "sys.argv[0] = 'glow-train'; sys.exit(train_main())"
)


@pytest.mark.parametrize("delay", [0.0, 0.3, 1.2])
def test_ctrl_c_during_start_up_is_one_line(tmp_path, delay):
    # start-up (the guarded imports of Hydra, then PyTorch, data, model) takes seconds:
    # the signal comes `delay` seconds into it, counted from glow-train's first line
    args = [f"run_dir={tmp_path / 'run'}", "train.progress=false"]
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT_WITH_READY, *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr.readline() == "ready\n"
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err == "glow-train: aborted\n", err
    assert not (tmp_path / "run").exists()


# 7. each command lists and accepts only its own options --------------------------------


def test_sample_and_eval_help_and_options_are_their_own(tmp_path):
    status, out, _ = run_console(sample_main, ["--help"], tmp_path)
    assert status == 0 and "temperature: 0.7" in out and "layout: grids" in out
    assert "experiment" not in out and "model" not in out
    status, out, _ = run_console(eval_main, ["--help"], tmp_path)
    assert status == 0 and "split: test" in out and "experiment" not in out
    assert all(name in out for name in dataset_names())
    line = one_line_error(sample_main, ["experiment=cifar10"], tmp_path, "glow-sample")
    assert "experiment is not an option of glow-sample; it takes ckpt, temperature, n," in line
    line = one_line_error(eval_main, ["model.K=3"], tmp_path, "glow-eval")
    assert "model is not an option of glow-eval" in line
    assert os.listdir(tmp_path) == []


# 8. whole numbers show as whole numbers -------------------------------------------------


def test_whole_numbers_show_without_a_decimal_point(tmp_path):
    """A float-typed option holding a whole number (digits' `dataset.val_size: 200`,
    `train.grad_clip: 50`) shows as `200` in `--help`, `--cfg` and the one-line errors,
    while a saved config (OmegaConf's YAML outside `--help`) keeps its floats."""
    whole_float = re.compile(r"(:|-) -?\d+\.0$", re.MULTILINE)
    for main, words in (
        (train_main, ["val_size: 200\n", "grad_clip: 50\n"]),
        (sample_main, ["temperature: 0.7\n"]),
        (eval_main, ["split: test\n"]),
    ):
        status, out, _ = run_console(main, ["--help"], tmp_path)
        assert status == 0 and all(w in out for w in words), out
        assert not whole_float.findall(out), whole_float.findall(out)
    status, out, _ = run_console(train_main, ["dataset=csv", "--help"], tmp_path)
    assert status == 0 and "work_budget: 2e11\n" in out and not whole_float.findall(out)
    status, out, _ = run_console(train_main, ["--cfg", "job", "train.lr=1"], tmp_path)
    assert status == 0 and "  lr: 1\n" in out and not whole_float.findall(out)
    assert OmegaConf.to_yaml({"val_size": 200.0}) == "val_size: 200.0\n"  # restored
    line = one_line_error(train_main, ["train.grad_clip=-2"], tmp_path)
    assert line.endswith("train.grad_clip must be positive or null, got -2"), line
    line = one_line_error(train_main, ["dataset.val_size=1500"], tmp_path)
    assert "dataset.val_size=1500 leaves no training images" in line, line
    line = one_line_error(train_main, ["train.sample_temperatures=[1,-1]"], tmp_path)
    assert line.endswith("got [1, -1]"), line
    assert os.listdir(tmp_path) == []
