"""Sweeps and clusters: Hydra multirun folders, the returned objective (Optuna), submitit's
local launcher with two tasks as one DDP group, ckpt=auto and pre-emption."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import torch
import yaml
from helpers import glow_train_cmd, run_console
from test_train import TINY

from glow_train.cli import train_main
from glow_train.runtime.cluster import export_torch_env, first_host

FAST = [*TINY, "model.K=1", "model.hidden_channels=8", "train.eval_every_steps=null"]


def jobs(sweep):
    return sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())


def test_multirun_jobs_write_into_their_own_job_folders(tmp_path):
    sweep = tmp_path / "multirun"
    args = ["-m", *FAST, "train.max_steps=3", "model.K=1,2", f"hydra.sweep.dir={sweep}"]
    status, out, err = run_console(train_main, args, tmp_path)
    assert status == 0, err
    folders = jobs(sweep)
    assert [p.name for p in folders] == ["0", "1"]
    for job, k in zip(folders, (1, 2), strict=True):
        for name in ("config.yaml", "last.pt", "best.pt", "samples.png"):
            assert (job / name).is_file(), (job, name)
        assert any((job / "tb").iterdir())
        assert yaml.safe_load((job / "config.yaml").read_text())["model"]["K"] == k
    assert not (tmp_path / "runs").exists()
    assert out.count("objective for the sweeper: val bpd") == 2


def test_a_failed_job_does_not_end_the_sweep(tmp_path):
    sweep = tmp_path / "multirun"
    args = ["-m", *FAST, "train.max_steps=2", "model.hidden_channels=0,8"]
    status, out, err = run_console(train_main, [*args, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert status == 1, err  # the sweep went on, and its exit status says a job failed
    assert "glow-train: error: model: hidden_channels must be at least 1" in err
    assert "job 0 failed; the sweep goes on" in err
    assert "glow-train: 1 of 2 jobs failed:\n  job 0 (model.hidden_channels=0): " in err
    assert (sweep / "1" / "last.pt").is_file() and out.count("objective for the sweeper") == 1


def test_a_single_run_still_goes_to_runs(tmp_path):
    status, out, err = run_console(train_main, [*FAST, "train.max_steps=2"], tmp_path)
    assert status == 0, err
    assert len(list((tmp_path / "runs" / "digits").iterdir())) == 1
    assert "objective for the sweeper" not in out


def test_optuna_sweep_minimises_the_returned_validation_figure(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs glow-train[sweep]")
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/sweeper=digits_search", "hydra.sweeper.n_trials=3", *FAST]
    args += ["train.max_steps=3", f"hydra.sweep.dir={sweep}"]
    status, out, err = run_console(train_main, args, tmp_path)
    assert status == 0, err
    values = [float(line.split()[-1]) for line in out.splitlines() if "objective for the" in line]
    assert len(values) == 3 and len(jobs(sweep)) == 3
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(min(values), abs=5e-5)  # printed to 4 places
    # the search space less what the command line fixes (K, width, warm-up)
    assert set(results["best_params"]) == {"train.lr", "train.ema_decay"}


def test_optuna_sweep_with_failed_trials_goes_on_and_exits_one(tmp_path):
    """`hydra/sweeper=digits_search` with trials that fail (a width of 0 in the search):
    the search goes on, Optuna's results are written from the good trials, and the
    command lists the failed ones and exits 1, as the default sweeper does."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs glow-train[sweep]")
    sweep = tmp_path / "sweep"
    fixed = [arg for arg in FAST if not arg.startswith("model.hidden_channels=")]
    args = ["-m", "hydra/sweeper=digits_search", "hydra.sweeper.n_trials=4", *fixed]
    args += ["hydra.sweeper.params={model.hidden_channels:'choice(0,8)'}"]
    args += ["train.max_steps=2", f"hydra.sweep.dir={sweep}"]
    status, out, err = run_console(train_main, args, tmp_path)
    started = [line for line in out.splitlines() if line.startswith("job ")]
    bad = sum("model.hidden_channels=0 " in line for line in started)
    assert len(started) == 4 and 0 < bad < 4, out  # seed 0 draws both widths
    assert status == 1, err
    assert f"glow-train: {bad} of 4 trials failed:" in err
    assert err.count("glow-train: error: model: hidden_channels must be at least 1") == bad
    assert out.count("objective for the sweeper") == 4 - bad
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"]["model.hidden_channels"] == 8


def test_submitit_local_two_tasks_form_one_group_and_one_run(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs glow-train[cluster]")
    sweep = tmp_path / "multirun"
    args = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2"]
    args += ["hydra.launcher.timeout_min=10", "device=cpu", *FAST, "train.max_steps=4"]
    args += [f"hydra.sweep.dir={sweep}"]
    status, out, err = run_console(train_main, args, tmp_path)
    assert status == 0, err
    (job,) = jobs(sweep)
    logs = {p.name: p.read_text() for p in (sweep / ".submitit").rglob("*_log.out")}
    (rank0,) = [text for name, text in logs.items() if name.endswith("_0_log.out")]
    (rank1,) = [text for name, text in logs.items() if name.endswith("_1_log.out")]
    assert "batch 64 x 2 process(es) = 128" in rank0  # rank 0 speaks for the group of two
    assert "objective for the sweeper: val bpd" in rank0 and "objective" not in rank1
    assert len(list(job.glob("*.pt"))) == 2  # one last.pt and one best.pt
    state = torch.load(job / "last.pt", weights_only=True)
    assert state["step"] == 4 and state["world_size"] == 2
    # the two-task run resumes on one process
    resumed = [f"ckpt={job / 'last.pt'}", "train.max_steps=6", "train.progress=false"]
    status, out, err = run_console(train_main, resumed, tmp_path)
    assert status == 0 and "resuming" in out, err
    assert torch.load(job / "last.pt", weights_only=True)["step"] == 6


def test_ckpt_auto_starts_fresh_then_resumes(tmp_path):
    run = tmp_path / "run"
    command = [*FAST, "ckpt=auto", f"run_dir={run}", "train.max_steps=3"]
    status, out, err = run_console(train_main, command, tmp_path)
    assert status == 0 and out.startswith("training:"), err
    status, out, err = run_console(train_main, [*command[:-1], "train.max_steps=5"], tmp_path)
    assert status == 0 and f"resuming {run / 'last.pt'} at step 3" in out, err
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 5
    status, _, err = run_console(train_main, [*FAST, "ckpt=auto"], tmp_path)
    assert status == 2 and "ckpt=auto resumes the run folder's last.pt: give run_dir=" in err


def test_a_preempted_job_rerun_with_the_same_command_ends_as_an_uninterrupted_one(tmp_path):
    # 400 tiny steps (2-4 s) so that the signal lands mid-training, after the handler
    # (installed just after tb/ appears) and well before the run ends and restores it
    command = [glow_train_cmd(), *FAST, "train.max_steps=400", "ckpt=auto"]
    proc = subprocess.Popen(
        [*command, f"run_dir={tmp_path / 'a'}"], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "a" / "tb").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGUSR2)  # SLURM's warning before pre-emption or the time limit
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "SIGUSR2 received: saving last.pt" in out
    stopped = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["step"]
    assert 0 < stopped < 400
    for folder in ("a", "b"):  # the requeued job, and an uninterrupted one
        done = subprocess.run(
            [*command, f"run_dir={tmp_path / folder}"], cwd=tmp_path, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 400
    for key in b["objective"]:
        assert torch.equal(a["objective"][key], b["objective"][key]), key


def test_cluster_variables_become_torchrun_ones(monkeypatch):
    assert first_host("gpu[003-005,007],cpu1") == "gpu003" and first_host("n01") == "n01"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "SUBMITIT_EXECUTOR")}
    env |= {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1"}
    env |= {"SLURM_STEP_NODELIST": "node[12-13]", "SLURM_JOB_ID": "4242"}
    for key in ("WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    monkeypatch.setattr(os, "environ", env)  # a copy: nothing leaks into other tests
    assert export_torch_env() == "slurm"
    got = {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    assert got == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "node12",
        "MASTER_PORT": str(20000 + 4242),
    }
    assert export_torch_env() is None  # torchrun's variables now present: left alone


def test_the_preemption_signal_is_handed_on_after_the_save(monkeypatch):
    """submitit requeues the job from its own SIGUSR2 handler: glow-train calls it on the
    way out, once the checkpoint is written, not before."""
    from glow_train.errors import ConfigError
    from glow_train.training.signals import Interrupt, preempt_signal

    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with Interrupt(verbose=False, preempt=preempt_signal("USR2")) as interrupt:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.05)
            assert interrupt.requested and calls == []  # the loop saves here
        assert calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert preempt_signal(None) is None and preempt_signal("SIGUSR1") == signal.SIGUSR1
    with pytest.raises(ConfigError, match="train.preempt_signal='SIGKILL' is not a signal"):
        preempt_signal("SIGKILL")


@pytest.mark.parametrize("preset", ["slurm_gpu", "slurm_cpu"])
def test_slurm_presets_compose_to_submitit_settings(preset):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs glow-train[cluster]")
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    overrides = [f"hydra/launcher={preset}", "hydra.launcher.nodes=2"]
    with initialize_config_module("glow_train.configs", version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["nodes"] == 2 and launcher["signal_delay_s"] == 90
    if preset == "slurm_gpu":  # one task (DDP rank) per GPU
        assert OmegaConf.select(cfg, "hydra.launcher.tasks_per_node") == launcher["gpus_per_node"]
