"""Issue 24, through the entry points: each defect and its variants ends in the right exit
status and one line naming the real cause and the option typed, and no file is lost,
replaced or left half-written that the user did not ask for."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import one_line_error, run_console, snapshot, start_glow_train
from test_table import SHORT, gaussian_rows, write_csv
from test_train import TINY, compose_train

from glow_train.cli import eval_main, sample_main, train_main
from glow_train.io.checkpoint import load_checkpoint
from glow_train.io.outputs import Outputs, Target
from glow_train.training import train

FAST = [*TINY, "model.K=1", "model.hidden_channels=8", "train.progress=false"]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("image") / "run"
    train(compose_train(*FAST, "train.max_steps=2", f"run_dir={run_dir}"))
    return run_dir


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """A table model trained on ``base.csv`` given relative to its folder: (folder, run)."""
    folder = tmp_path_factory.mktemp("table")
    write_csv(folder / "base.csv", ["a", "b", "c"], gaussian_rows(300))
    args = ["dataset=csv", "dataset.path=base.csv", *SHORT, "train.max_steps=2", "run_dir=run"]
    status, out, err = run_console(train_main, args, folder)
    assert status == 0, err
    return folder, folder / "run"


# 1. never overwrite what the user did not ask to ----------------------------------------


def test_sample_never_writes_over_the_training_table(table_run, tmp_path):
    folder, run = table_run
    before = (folder / "base.csv").read_bytes()
    for extra in ([], ["overwrite=true"]):
        args = [f"ckpt={run / 'last.pt'}", "out=base.csv", "n=2", *extra]
        line = one_line_error(sample_main, args, folder, "glow-sample")
        assert "out=base.csv would write" in line and "the dataset's file (dataset.path=" in line
        assert "never writes over its inputs, even with overwrite=true" in line
    assert (folder / "base.csv").read_bytes() == before
    # the run still evaluates
    status, out, err = run_console(eval_main, [f"ckpt={run}", "progress=false"], tmp_path)
    assert status == 0, err


def test_a_file_the_user_named_is_kept_unless_overwrite(image_run, tmp_path):
    (tmp_path / "mine.png").write_bytes(b"my picture")
    (tmp_path / "mine.json").write_text("{}")
    line = one_line_error(
        sample_main, [f"ckpt={image_run}", "out=mine.png"], tmp_path, "glow-sample"
    )
    assert line.endswith(
        "out=mine.png exists; pass overwrite=true to replace it, or name another file or folder"
    )
    line = one_line_error(eval_main, [f"ckpt={image_run}", "out=mine.json"], tmp_path, "glow-eval")
    assert "out=mine.json exists; pass overwrite=true" in line
    assert (tmp_path / "mine.png").read_bytes() == b"my picture"
    assert (tmp_path / "mine.json").read_text() == "{}"
    # several temperatures: one existing file among them refuses all, before any is drawn
    (tmp_path / "g_T1.png").write_bytes(b"x")
    args = [f"ckpt={image_run}", "out=g.png", "temperature=[0.5,1]"]
    line = one_line_error(sample_main, args, tmp_path, "glow-sample")
    assert "g_T1.png exists" in line and not (tmp_path / "g_T0.5.png").exists()
    # overwrite=true replaces them, atomically (no temporary file left)
    for main, name in ((sample_main, "mine.png"), (eval_main, "mine.json")):
        status, out, err = run_console(
            main, [f"ckpt={image_run}", f"out={name}", "overwrite=true"], tmp_path
        )
        assert status == 0, err
    assert (tmp_path / "mine.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "mine.json").read_text())["split"] == "test"
    assert not list(tmp_path.glob(".*.tmp"))


def test_files_in_a_folder_the_user_named_are_kept_but_the_tools_own_are_replaced(
    image_run, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(image_run, run)
    for _ in range(2):  # samples/ and eval/ are the tool's own: rerunning replaces them
        assert run_console(sample_main, [f"ckpt={run}"], tmp_path)[0] == 0
        assert run_console(eval_main, [f"ckpt={run}", "progress=false"], tmp_path)[0] == 0
    assert run_console(sample_main, [f"ckpt={run}", "out=grids"], tmp_path)[0] == 0
    line = one_line_error(sample_main, [f"ckpt={run}", "out=grids"], tmp_path, "glow-sample")
    assert "out=grids: grids/best_T0.7.png exists; pass overwrite=true" in line
    assert (
        run_console(sample_main, [f"ckpt={run}", "out=grids", "overwrite=true"], tmp_path)[0] == 0
    )


def test_the_checkpoint_and_input_images_are_never_outputs(image_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(image_run, run)
    before = snapshot(run)
    for extra in ([], ["overwrite=true"]):
        args = [f"ckpt={run / 'last.pt'}", f"out={run / 'last.pt'}", *extra]
        line = one_line_error(sample_main, args, tmp_path, "glow-sample")
        assert f"out={run / 'last.pt'} is an existing file; pass a folder or an image" in line
    # an image that mode=interpolate reads is not its output either
    face = tmp_path / "face.png"
    status, _, err = run_console(sample_main, [f"ckpt={run}", "n=1", f"out={face}"], tmp_path)
    assert status == 0, err
    picture = face.read_bytes()
    args = [f"ckpt={run}", "mode=interpolate", f"a={face}", "b=0", f"out={face}", "overwrite=true"]
    line = one_line_error(sample_main, args, tmp_path, "glow-sample")
    assert "which is the input image" in line
    assert face.read_bytes() == picture
    assert snapshot(run) == before


def test_the_policy_checks_every_target_before_any_is_written(tmp_path):
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(b"weights")
    outputs = Outputs(overwrite=True)
    outputs.protect(ckpt, "the checkpoint")
    with pytest.raises(Exception, match="which is the checkpoint; a command never writes"):
        outputs.claim([Target(ckpt, own=True)], ckpt)
    data = tmp_path / "data.csv"
    data.write_text("a\n1\n")
    outputs = Outputs(overwrite=True)
    outputs.protect(data, "the dataset's file")
    link = tmp_path / "link.csv"
    link.symlink_to(data)
    with pytest.raises(Exception, match="the dataset's file"):
        outputs.claim([Target(tmp_path / "new.csv", own=False), Target(link, own=False)])
    assert not (tmp_path / "new.csv").exists()


# 2. sweeps that survive bad jobs ---------------------------------------------------------

SWEEP = [*FAST, "train.max_steps=2", "train.eval_every_steps=null"]


def test_a_value_that_does_not_compose_fails_alone(tmp_path):
    sweep = tmp_path / "multirun"
    args = ["-m", *SWEEP, "train.lr=1e-3,abc", f"hydra.sweep.dir={sweep}"]
    status, out, err = run_console(train_main, args, tmp_path)
    assert status == 1, err
    assert (sweep / "0" / "last.pt").is_file()  # the valid job ran
    assert not (sweep / "1").exists()  # no folder for the job that never started
    assert "glow-train: job 1 (train.lr=abc): train.lr=abc: Value 'abc'" in err
    assert "Value 'abc' of type 'str' could not be converted to Float" in err
    assert "glow-train: 1 of 2 jobs failed:" in err and "Traceback" not in err
    assert out.count("objective for the sweeper") == 1


def test_a_bad_value_every_job_shares_is_one_line_before_any_job(tmp_path):
    sweep = tmp_path / "multirun"
    args = ["-m", *SWEEP, "train.lr=abc", "model.K=1,2", f"hydra.sweep.dir={sweep}"]
    line = one_line_error(train_main, args, tmp_path, "glow-train")
    assert line == (
        "glow-train: error: train.lr=abc: Value 'abc' of type 'str' could not be converted to Float"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_failing_job_is_listed_and_the_sweep_exits_non_zero(tmp_path):
    sweep = tmp_path / "multirun"
    args = ["-m", *SWEEP, "train.lr=-1,1e-3", f"hydra.sweep.dir={sweep}"]
    status, out, err = run_console(train_main, args, tmp_path)
    assert status == 1, err
    assert "glow-train: error: train.lr must be positive, got -1" in err
    assert "1 of 2 jobs failed:\n  job 0 (train.lr=-1): returned nan" in err
    assert not (sweep / "0").exists()  # the failed job's folder is not left empty
    assert (sweep / "1" / "last.pt").is_file()


def test_a_sweep_of_good_jobs_exits_zero(tmp_path):
    sweep = tmp_path / "multirun"
    args = ["-m", *SWEEP, "train.lr=1e-3,2e-3", f"hydra.sweep.dir={sweep}"]
    status, out, err = run_console(train_main, args, tmp_path)
    assert status == 0, err
    assert "failed" not in err and out.count("objective for the sweeper") == 2


# 3. a signal stops the run promptly ------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR2])
def test_a_signal_saves_and_stops_without_final_evaluation(tmp_path, sig):
    run_dir = tmp_path / "run"
    args = [*FAST, "train.max_steps=100000", f"run_dir={run_dir}"]
    proc = start_glow_train(args, tmp_path, wait_for=run_dir / "tb", then=0.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    name = signal.Signals(sig).name
    # the shell's 128 + n for SIGINT and SIGTERM, after saving: `glow-train && glow-eval`
    # stops there; the pre-emption signal (SIGUSR2) exits 0: the job is requeued
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}.get(sig, 0), err
    assert f"{name} received: saving last.pt at the end of this step, then stopping" in out
    assert ("Ctrl-C again" in out) == (sig == signal.SIGINT)
    assert f"stopped by {name} at step" in out and "continue with glow-train ckpt=" in out
    # no validation, test evaluation or samples after the signal
    assert "test bpd" not in out and "val bpd" not in out
    assert not (run_dir / "samples.png").exists()
    state = load_checkpoint(run_dir / "last.pt")
    assert state["finished"] is False and 0 < state["step"] < 100000


# 4, 5. tables: header spellings, data that cannot be standardised, line numbers ---------


@pytest.mark.parametrize("header", ["true", "false", "True", "auto"])
def test_header_accepts_the_documented_spellings(tmp_path, header):
    rows = gaussian_rows(60)
    write_csv(tmp_path / "t.csv", ["a", "b", "c"] if header != "false" else None, rows)
    args = ["dataset=csv", "dataset.path=t.csv", f"dataset.header={header}", *SHORT]
    status, out, err = run_console(train_main, [*args, "train.max_steps=1", "run_dir=r"], tmp_path)
    assert status == 0, err


def test_data_beyond_float32_is_refused_naming_column_and_line(tmp_path):
    rows = gaussian_rows(60).tolist()
    rows[4][1] = 1e300
    write_csv(tmp_path / "t.csv", ["a", "b", "c"], rows)
    args = ["dataset=csv", "dataset.path=t.csv", *SHORT, "run_dir=r"]
    line = one_line_error(train_main, args, tmp_path, "glow-train")
    assert "column 'b' has the value 1e+300 (line 6), beyond float32's range" in line
    assert not (tmp_path / "r").exists()


def test_csv_errors_name_the_files_own_line(tmp_path):
    text = 'a,b,c\n1,2,3\n\n\n4,"5\n",6\n7,x,9\n'
    (tmp_path / "t.csv").write_text(text)
    args = ["dataset=csv", "dataset.path=t.csv", "dataset.columns=[a,b]", *SHORT, "run_dir=r"]
    line = one_line_error(train_main, args, tmp_path, "glow-train")
    assert "column 'b' is not numeric (line 7: 'x')" in line


# 6. messages that name the real cause ----------------------------------------------------


def test_a_huge_temperature_is_blamed_not_the_model(image_run, tmp_path):
    line = one_line_error(
        sample_main, [f"ckpt={image_run}", "temperature=1e30"], tmp_path, "glow-sample"
    )
    assert "temperature=1e+30 are not finite" in line and "the temperature is too high" in line
    assert "diverged" not in line
    assert list(tmp_path.iterdir()) == []


def test_a_table_too_small_states_the_real_rule(tmp_path):
    write_csv(tmp_path / "t.csv", ["a", "b"], [[1, 2], [3, 5]])
    args = ["dataset=csv", "dataset.path=t.csv", *SHORT, "run_dir=r"]
    line = one_line_error(train_main, args, tmp_path, "glow-train")
    assert "2 rows split into 0 test, 0 validation and 2 training rows" in line
    assert "at least 1 test row and 2 training rows: add rows" in line


def test_eval_of_a_table_model_on_other_columns_names_dataset_columns(table_run, tmp_path):
    _, run = table_run
    write_csv(tmp_path / "other.csv", ["x", "y"], gaussian_rows(50)[:, :2])
    args = [f"ckpt={run}", f"dataset.path={tmp_path / 'other.csv'}", "progress=false"]
    line = one_line_error(eval_main, args, tmp_path, "glow-eval")
    assert "takes 3 columns (a, b, c); set dataset.columns=" in line
    assert "image_size" not in line


def test_ood_folders_without_images_name_ood(image_run, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"not an image")
    line = one_line_error(eval_main, [f"ckpt={image_run}", "ood=empty"], tmp_path, "glow-eval")
    assert "ood=empty holds no image files" in line and "dataset.root" not in line
    status, out, err = run_console(eval_main, [f"ckpt={image_run}", "ood=junk"], tmp_path)
    assert status == 2 and err.strip().splitlines() == [
        "glow-eval: error: ood=junk: none of its 1 image file(s) can be read as an image; "
        "point ood= at a folder of images"
    ]


def test_a_torch_save_of_python_objects_is_named_as_such(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pt")
    line = one_line_error(eval_main, ["ckpt=model.pt"], tmp_path, "glow-eval")
    assert "was written by torch.save but is not a glow-train checkpoint" in line


# 7. a checkpoint resumes and evaluates from another folder --------------------------------


def test_a_table_run_resumes_and_evaluates_from_another_folder(table_run, tmp_path):
    folder, run = table_run
    state = load_checkpoint(run / "last.pt")
    assert state["config"]["dataset"]["path"] == str(folder / "base.csv")
    status, out, err = run_console(eval_main, [f"ckpt={run}", "progress=false"], tmp_path)
    assert status == 0, err
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    status, out, err = run_console(
        train_main, [f"ckpt={copy / 'last.pt'}", "train.max_steps=3"], tmp_path
    )
    assert status == 0, err


def test_a_missing_stored_path_names_the_key_to_pass(table_run, tmp_path):
    _, run = table_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    state = torch.load(copy / "last.pt", weights_only=True)
    state["config"]["dataset"]["path"] = "moved.csv"
    torch.save(state, copy / "last.pt")
    line = one_line_error(eval_main, [f"ckpt={copy / 'last.pt'}"], tmp_path, "glow-eval")
    assert (
        f"dataset.path=moved.csv does not exist or is not a file (relative to {tmp_path})" in line
    )
    assert line.endswith("pass dataset.path=<the CSV file>")


# 8. accepted nonsense ---------------------------------------------------------------------


def test_eval_at_another_bit_depth_says_so(image_run, tmp_path):
    status, out, err = run_console(
        eval_main, [f"ckpt={image_run}", "n_bits=8", "progress=false", "out=e.json"], tmp_path
    )
    assert status == 0, err
    assert "note: the model was trained on 4-bit images; n_bits=8 scores it on 8-bit" in err
    summary = json.loads((tmp_path / "e.json").read_text())
    assert summary["n_bits"] == 8 and summary["model_n_bits"] == 4


def test_a_saturating_alpha_is_refused(image_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(image_run, run)
    status, _, err = run_console(
        sample_main, [f"ckpt={run}", "mode=direction", "attribute=0"], tmp_path
    )
    assert status == 0, err
    before = snapshot(run)
    args = [f"ckpt={run}", "mode=manipulate", "attribute=0", "image=0", "alpha=[1e30,0]"]
    line = one_line_error(sample_main, args, tmp_path, "glow-sample")
    assert "alpha=1e+30 moves the image's latent" in line and "keep every alpha within" in line
    assert snapshot(run) == before
    args[-1] = "alpha=[-1,0,1]"
    assert run_console(sample_main, args, tmp_path)[0] == 0


def test_a_temperature_column_of_the_data_keeps_its_name(tmp_path):
    write_csv(tmp_path / "t.csv", ["temperature", "b"], gaussian_rows(120)[:, :2])
    args = ["dataset=csv", "dataset.path=t.csv", *SHORT, "train.max_steps=1", "run_dir=r"]
    assert run_console(train_main, args, tmp_path)[0] == 0
    args = ["ckpt=r", "layout=rows", "temperature=[0.5,1]", "n=2", "out=s.csv"]
    status, out, err = run_console(sample_main, args, tmp_path)
    assert status == 0, err
    header = (tmp_path / "s.csv").read_text().splitlines()[0].split(",")
    assert header == ["_temperature", "temperature", "b"]


# 9, 10. small tables train with the defaults; a finished requeued job is not an error -----


def test_a_small_table_trains_with_the_default_batch(tmp_path):
    write_csv(tmp_path / "t.csv", ["a", "b", "c"], gaussian_rows(100))
    args = ["dataset=csv", "dataset.path=t.csv", *SHORT[:-1], "train.max_steps=2", "run_dir=r"]
    status, out, err = run_console(train_main, args, tmp_path)
    assert status == 0, err
    assert load_checkpoint(tmp_path / "r" / "last.pt")["batch_size"] <= 70


def test_a_batch_larger_than_the_training_split_shrinks_to_it(tmp_path):
    write_csv(tmp_path / "t.csv", ["a", "b", "c"], gaussian_rows(100))
    args = ["dataset=csv", "dataset.path=t.csv", "dataset.batch_size=256", *SHORT[:-1]]
    args += ["train.max_steps=2", "run_dir=r"]
    status, out, err = run_console(train_main, args, tmp_path)
    assert status == 0, err
    assert (
        "note: dataset.batch_size=256 is larger than the 70 training items per process; "
        "using batches of 70" in out
    )
    assert load_checkpoint(tmp_path / "r" / "last.pt")["batch_size"] == 70


def test_ckpt_auto_on_a_finished_run_exits_zero_with_one_line(tmp_path):
    command = [*FAST, "ckpt=auto", "run_dir=run", "train.max_steps=2"]
    assert run_console(train_main, command, tmp_path)[0] == 0
    before = snapshot(tmp_path / "run")
    status, out, err = run_console(train_main, command, tmp_path)
    assert status == 0, err
    assert out.strip().splitlines() == [
        f"run already finished at step 2 (train.max_steps=2, train.max_epochs=None); "
        f"val bpd {load_checkpoint(tmp_path / 'run' / 'last.pt')['last_val_score']:.4f}: "
        "nothing to do"
    ]
    assert snapshot(tmp_path / "run") == before


def test_a_run_stopped_at_its_last_step_still_gets_its_final_figures(tmp_path):
    cfg = compose_train(*FAST, "train.max_steps=2", f"run_dir={tmp_path / 'run'}")
    train(cfg)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    state["finished"] = False  # as a signal at the last step leaves it
    torch.save(state, tmp_path / "run" / "last.pt")
    status, out, err = run_console(
        train_main, [*FAST, "ckpt=auto", "run_dir=run", "train.max_steps=2"], tmp_path
    )
    assert status == 0, err
    assert "val bpd:" in out and "test bpd:" in out
    assert load_checkpoint(tmp_path / "run" / "last.pt")["finished"] is True


# 11. start-up: --help, --cfg and config errors load no PyTorch ----------------------------


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"], ["train.lr=abc"], ["model.K=2.5"]])
def test_help_cfg_and_config_errors_do_not_import_torch(tmp_path, args):
    code = (
        "import sys\n"
        "from glow_train.cli import train_main\n"
        f"sys.argv = ['glow-train', *{args!r}]\n"
        "try:\n"
        "    train_main()\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "else:\n"
        "    code = 0\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.stderr.strip().splitlines()[-1] == "NO-TORCH", proc.stderr
    assert proc.returncode == (0 if args[0].startswith("--") else 2)
    assert list(tmp_path.iterdir()) == []


def test_the_sample_csv_policy_refuses_a_non_csv_name_for_vectors(table_run, tmp_path):
    _, run = table_run
    line = one_line_error(sample_main, [f"ckpt={run}", "out=s.png"], tmp_path, "glow-sample")
    assert "samples of a vector model are CSV" in line
    np.testing.assert_equal(list(tmp_path.iterdir()), [])
