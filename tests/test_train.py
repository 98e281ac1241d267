"""The trainer: end to end, exact resume, interruption, skipped steps, logs, configs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import glow_train_cmd, run_console, start_glow_train
from hydra import compose, initialize_config_module

from glow_train.cli import train_main
from glow_train.errors import CheckpointError, ConfigError
from glow_train.io.checkpoint import load_checkpoint, save_checkpoint
from glow_train.runtime.distributed import DistInfo
from glow_train.training import Trainer, TrainingDiverged, parse_duration, train

TINY = [
    "model.L=2",  # two levels: the factor-out and split priors run in every tiny test
    "model.K=2",
    "model.hidden_channels=16",
    "train.time_limit=null",
    "train.cosine_decay=false",
    "train.warmup_steps=5",
    "train.eval_every_steps=null",
    "train.sample_every=null",
    "train.num_samples=4",
    "train.progress=false",
    "train.log_every=5",
]


def compose_train(*overrides: str):
    with initialize_config_module("glow_train.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_parse_duration():
    assert parse_duration("120s") == 120
    assert parse_duration("90m") == 5400
    assert parse_duration("2h") == 7200
    assert parse_duration(45) == 45
    assert parse_duration("1.5h") == 5400
    assert parse_duration(None) is None
    with pytest.raises(ConfigError, match="not a duration"):
        parse_duration("two hours")


@pytest.mark.parametrize("dataset", ["digits", "mnist", "cifar10", "celeba", "folder"])
def test_every_dataset_composes(dataset):
    cfg = compose_train(f"dataset={dataset}")
    assert cfg.dataset.name == dataset
    assert {"n_bits", "image_size", "batch_size", "hflip"} <= set(cfg.dataset)


@pytest.mark.parametrize(
    "experiment,expected",
    [
        ("mnist", (16, 2, 256)),
        ("cifar10", (32, 3, 512)),
        ("celeba", (32, 4, 512)),
        ("celeba_hq256", (32, 6, 512)),
    ],
)
def test_experiment_presets_have_the_papers_settings(experiment, expected):
    cfg = compose_train(f"experiment={experiment}")
    assert cfg.dataset.name == {"celeba_hq256": "folder"}.get(experiment, experiment)
    assert (cfg.model.K, cfg.model.L, cfg.model.hidden_channels) == expected
    assert cfg.dataset.image_size % 2**cfg.model.L == 0


def test_console_script_end_to_end_from_another_directory(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [glow_train_cmd(), *TINY, "train.max_steps=12", "train.eval_every_steps=6"]
        + [f"run_dir={run_dir}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "test bpd:" in proc.stdout and f"best checkpoint: {run_dir / 'best.pt'}" in proc.stdout
    for name in ("config.yaml", "last.pt", "best.pt", "samples.png"):
        assert (run_dir / name).is_file(), name
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["step"] == 12 and state["ema"] is not None
    assert state["config"]["model"]["K"] == 2
    assert state["metric"] == "bpd" and 0 < state["last_test_score"] < 8
    assert not (tmp_path / "outputs").exists()  # Hydra writes nothing of its own

    # TensorBoard's own reader finds the scalars and the sample images
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("train/bpd", "val/bpd", "test/bpd", "lr", "grad_norm", "images_per_sec"):
        assert tag in tags["scalars"], tag
    # validation figures choose best.pt along the way; the test figure only at the end
    assert [e.step for e in events.Scalars("val/bpd")] == [6, 12]
    assert [e.step for e in events.Scalars("test/bpd")] == [12]
    assert any(t.startswith("samples/T=0.7") for t in tags["images"])


def _flat_state(state):
    params = torch.cat([v.flatten().double() for v in state["objective"].values()])
    moments = [
        t
        for s in state["optimizer"]["state"].values()
        for t in (s["exp_avg"], s["exp_avg_sq"], s["step"])
    ]
    return params, moments


@pytest.mark.parametrize(
    ("kind", "shown", "hidden"), [("image", "img_s=", "items_s"), ("vector", "items_s=", "img_s")]
)
def test_progress_bar_counts_images_or_items(tmp_path, capsys, kind, shown, hidden):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from glow_train.training.monitor import Monitor

    monitor = Monitor(True, "nats_per_dim", "nats/dim", kind)
    monitor.open(tmp_path, total=1, initial=0, progress=True)
    monitor.step({"step": 1, "score": 1.5, "lr": 1e-3, "grad_norm": 0.5}, 123.0, 0)
    monitor.advance()
    monitor.close()
    bar = capsys.readouterr().err
    assert f"{shown}123" in bar and hidden not in bar
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tag = "images_per_sec" if kind == "image" else "items_per_sec"
    assert [e.value for e in events.Scalars(tag)] == [123.0]


def test_resume_is_exact(tmp_path):
    base = [*TINY, "dataset.batch_size=32", "train.ema_decay=0.9"]
    straight = train(compose_train(*base, "train.max_steps=60", f"run_dir={tmp_path / 'a'}"))
    train(compose_train(*base, "train.max_steps=30", f"run_dir={tmp_path / 'b'}"))
    half = load_checkpoint(tmp_path / "b" / "last.pt")
    assert half["step"] == 30 and half["epoch"] == 0 and half["batch_in_epoch"] == 30
    resumed = train(
        compose_train(*base, "train.max_steps=60", f"ckpt={tmp_path / 'b' / 'last.pt'}")
    )
    assert resumed.run_dir == (tmp_path / "b").resolve()  # writes into the original folder
    a = load_checkpoint(straight.last_ckpt)
    b = load_checkpoint(resumed.last_ckpt)
    assert a["step"] == b["step"] == 60 and a["epoch"] == b["epoch"] == 1
    pa, ma = _flat_state(a)
    pb, mb = _flat_state(b)
    assert torch.equal(pa, pb)
    assert all(torch.equal(x, y) for x, y in zip(ma, mb, strict=True))
    for k, v in a["ema"].items():
        assert torch.equal(v, b["ema"][k]), k
    assert a["scheduler"] == b["scheduler"]
    assert a["last_test_score"] == b["last_test_score"]


def _tiny_trainer(tmp_path, *extra):
    cfg = compose_train(*TINY, "train.max_steps=5", f"run_dir={tmp_path}", *extra)
    trainer = Trainer(cfg, DistInfo(), tmp_path)
    trainer.prepare()
    return trainer


@pytest.mark.parametrize("optimizer", ["adam", "adamax"])  # deferred and immediate steps
def test_non_finite_batch_is_skipped_without_changing_weights(tmp_path, optimizer):
    trainer = _tiny_trainer(tmp_path, "train.max_bad_steps=3", f"train.optimizer={optimizer}")
    assert trainer.optim.deferred == (optimizer == "adam")

    def step(x):
        """One step, its outcome counted (a deferred step's flags are read at settle)."""
        skipped = trainer.progress.skipped_steps
        trainer.train_step(x, noise, y)
        trainer.settle()
        return trainer.progress.skipped_steps > skipped

    x, noise, y = trainer.prepare_batch(next(iter(trainer.loader)), 0)
    assert not step(x)
    optimizer, ema = trainer.optim.optimizer, trainer.optim.ema
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    opt_before = [t.clone() for s in optimizer.state.values() for t in s.values()]
    ema_before = {k: v.clone() for k, v in ema.state_dict().items()}
    lr_before = trainer.optim.lr

    planted = x.clone()
    planted[0, 0, 0, 0] = float("nan")
    assert step(planted) and trainer.progress.skipped_steps == 1
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    after = [t for s in optimizer.state.values() for t in s.values()]
    assert all(torch.equal(a, b) for a, b in zip(opt_before, after, strict=True))
    for k, v in ema.state_dict().items():
        assert torch.equal(v, ema_before[k]), k
    assert trainer.optim.lr == lr_before  # the schedule did not move either

    assert not step(x)  # a good step resets the bad run
    assert trainer.progress.bad_in_a_row == 0 and trainer.progress.skipped_steps == 1
    assert trainer.optim.lr != lr_before


@pytest.mark.filterwarnings(r"ignore:Seems like `optimizer.step\(\)` has been overridden")
def test_deferred_step_reads_each_outcome_one_step_later(tmp_path):
    """The default step never waits for its own flags: train_step returns the previous
    step's figures, and the schedule of step t+1 counts every good step before it."""
    trainer = _tiny_trainer(tmp_path)
    x, noise, y = trainer.prepare_batch(next(iter(trainer.loader)), 0)
    first = trainer.train_step(x, noise, y)
    assert first["step"] == 0 and first["score"] is None  # nothing known yet
    lr_during_second = []
    real_step = trainer.optim.optimizer.step

    def spy(*args, **kwargs):
        lr_during_second.append(trainer.optim.lr)
        return real_step(*args, **kwargs)

    trainer.optim.optimizer.step = spy
    second = trainer.train_step(x, noise, y)
    assert second["step"] == 1 and second["score"] is not None and not second["skipped"]
    # the update of step 2 ran at the learning rate after one good step
    assert lr_during_second == [trainer.optim.scheduler.get_last_lr()[0]]
    assert trainer.optim.scheduler.last_epoch == 1
    trainer.settle()
    assert trainer.optim.scheduler.last_epoch == 2


def test_consecutive_bad_steps_stop_with_a_clear_message(tmp_path, monkeypatch):
    trainer = _tiny_trainer(tmp_path, "train.max_bad_steps=3")
    real_prepare = trainer.steps.prepare_batch

    def poisoned(batch, step):
        x, noise, y = real_prepare(batch, step)
        return x * float("inf"), noise, y

    monkeypatch.setattr(trainer.steps, "prepare_batch", poisoned)  # what the loop calls
    with pytest.raises(TrainingDiverged, match="3 consecutive steps .* learning rate"):
        trainer.fit()
    assert trainer.progress.skipped_steps == 3


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "train.max_steps=100000", f"run_dir={run_dir}"]
    proc = start_glow_train(args, tmp_path, wait_for=run_dir / "tb", then=1.5)  # some steps
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err  # saved, yet not finished: `&& glow-eval` stops
    assert "SIGTERM" in out + err
    state = torch.load(run_dir / "last.pt", weights_only=True)
    stopped_at = state["step"]
    assert 0 < stopped_at < 100000
    resumed = subprocess.run(
        [glow_train_cmd(), f"ckpt={run_dir / 'last.pt'}", f"train.max_steps={stopped_at + 4}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {stopped_at}" in resumed.stdout
    assert torch.load(run_dir / "last.pt", weights_only=True)["step"] == stopped_at + 4


def test_time_limit_stops_the_run_with_a_checkpoint(tmp_path):
    result = train(
        compose_train(*TINY, "train.max_steps=100000", "train.time_limit=1s", f"run_dir={tmp_path}")
    )
    assert 0 < result.step < 100000 and not result.interrupted
    state = load_checkpoint(result.last_ckpt)
    assert state["step"] == result.step and state["last_test_score"] == result.last_test_score


def test_clock_horizon():
    from glow_train.training.schedule import clock_horizon, lr_factor

    # 100 steps in 10 s, 30 s left: 300 more steps, capped by a step limit
    assert clock_horizon(120, 100, 10.0, 30.0, None) == 420
    assert clock_horizon(120, 100, 10.0, 30.0, 400) == 400
    assert clock_horizon(0, 0, 0.0, 30.0, None) is None  # no rate yet
    tcfg = compose_train("train.warmup_steps=10", "train.max_steps=null").train
    assert lr_factor(tcfg, 10, 50) == 1.0  # no horizon yet: constant after the warm-up
    assert lr_factor(tcfg, 10, 10, horizon=110) == 1.0
    assert lr_factor(tcfg, 10, 60, horizon=110) == pytest.approx(0.5)
    assert lr_factor(tcfg, 10, 200, horizon=110) == 0.0


def test_a_time_limited_run_ends_at_a_low_learning_rate(tmp_path):
    """The cosine decay follows the clock when the time limit ends the run."""
    result = train(
        compose_train(
            *TINY,
            "train.max_steps=null",
            "train.time_limit=10s",  # room for CLOCK_EVERY steps on a busy machine
            "train.cosine_decay=true",
            f"run_dir={tmp_path}",
        )
    )
    state = load_checkpoint(result.last_ckpt)
    horizon, lr = state["schedule_horizon"], state["optimizer"]["param_groups"][0]["lr"]
    assert horizon is not None and abs(horizon - result.step) <= max(20, result.step // 5)
    assert lr < 0.1 * float(state["config"]["train"]["lr"]), (result.step, horizon, lr)
    # a resumed run starts from the recorded horizon
    trainer = Trainer(
        compose_train(
            *TINY, "train.max_steps=null", "train.time_limit=4s", f"ckpt={result.last_ckpt}"
        ),
        DistInfo(),
        tmp_path,
    )
    trainer.prepare(state, result.last_ckpt)
    assert trainer.optim.horizon == horizon


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ckpt")
    train(compose_train(*TINY, "train.max_steps=3", f"run_dir={run_dir}"))
    return run_dir / "last.pt"


def _cli_error(args, cwd):
    """``glow-train args`` (in this process) fails with one line on stderr and status 2."""
    status, _, err = run_console(train_main, args, cwd)
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("glow-train: error:"), err
    return lines[0]


def test_bad_checkpoints_give_one_clear_error(tmp_path, small_checkpoint):
    assert "checkpoint not found" in _cli_error([f"ckpt={tmp_path / 'nope.pt'}"], tmp_path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(small_checkpoint.read_bytes()[:5000])
    assert "not a readable checkpoint" in _cli_error([f"ckpt={truncated}"], tmp_path)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    assert "not a glow-train checkpoint" in _cli_error([f"ckpt={foreign}"], tmp_path)
    copy = tmp_path / "copy" / "last.pt"
    copy.parent.mkdir()
    shutil.copy(small_checkpoint, copy)
    message = _cli_error([f"ckpt={copy}", "model.K=3", "train.max_steps=6"], tmp_path)
    assert "different configuration (K:" in message
    message = _cli_error([f"ckpt={copy}", "dataset=mnist"], tmp_path)
    assert "cannot change dataset=mnist when resuming" in message
    assert copy.read_bytes() == small_checkpoint.read_bytes()  # nothing overwritten


def test_incompatible_checkpoint_in_the_library(tmp_path, small_checkpoint):
    state = load_checkpoint(small_checkpoint)
    state["model_config"]["hidden_channels"] = 99
    other = save_checkpoint({k: v for k, v in state.items() if k != "format"}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="hidden_channels"):
        train(compose_train(*TINY, "train.max_steps=4", f"ckpt={other}"))


def test_bad_settings_give_one_clear_error(tmp_path):
    assert "not divisible by 2^L = 8" in _cli_error(
        ["model.L=3", "dataset.image_size=12"], tmp_path
    )
    assert "n_bits" in _cli_error(["dataset.n_bits=9"], tmp_path)
    assert "fp16 needs a CUDA device" in _cli_error(["precision=fp16", "device=cpu"], tmp_path)


def test_bf16_on_cpu_trains(tmp_path):
    result = train(
        compose_train(*TINY, "train.max_steps=3", "precision=bf16", f"run_dir={tmp_path}")
    )
    assert result.skipped_steps == 0 and 0 < result.last_test_score < 8


def test_atomic_save_leaves_previous_file_on_failure(tmp_path, monkeypatch):
    path = save_checkpoint({"step": 1}, tmp_path / "last.pt")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_checkpoint({"step": 2}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_resume_with_a_larger_global_batch_at_the_end_of_an_epoch(tmp_path):
    """A different global batch can leave less than one batch of the epoch: go on."""
    first = train(
        compose_train(
            *TINY,
            "dataset.val_size=0",
            "dataset.batch_size=100",
            "train.max_steps=14",
            f"run_dir={tmp_path}",
        )
    )
    assert load_checkpoint(first.last_ckpt)["batch_in_epoch"] == 14  # 1400 of 1500 images
    resumed = train(
        compose_train(
            *TINY,
            "dataset.val_size=0",
            "dataset.batch_size=700",
            "train.max_steps=16",
            f"ckpt={first.last_ckpt}",
        )
    )
    state = load_checkpoint(resumed.last_ckpt)
    # epoch 0 is used up at 1400 images; epoch 1 has two batches of 700: steps 15 and 16
    assert state["step"] == 16 and state["epoch"] == 2 and state["batch_in_epoch"] == 0


def test_a_new_run_never_overwrites_another(tmp_path, small_checkpoint):
    run_dir = small_checkpoint.parent
    before = small_checkpoint.read_bytes()
    message = _cli_error([*TINY, "train.max_steps=2", f"run_dir={run_dir}"], tmp_path)
    assert "already holds a run; resume it with ckpt=" in message
    assert small_checkpoint.read_bytes() == before


def test_default_run_folders_do_not_collide(tmp_path, monkeypatch):
    from glow_train.training.run_dir import resolve_run_dir

    monkeypatch.chdir(tmp_path)
    cfg = compose_train()
    (first, lock1), (second, lock2) = (
        resolve_run_dir(cfg, DistInfo()),
        resolve_run_dir(cfg, DistInfo()),
    )
    assert first != second and first.is_dir() and second.is_dir()
    assert first.parent == second.parent == Path("runs") / "digits"
    lock1.release(), lock2.release()  # nothing was written: the folders go again
    assert not first.exists() and not second.exists()


def test_max_epochs_alone_sets_the_cosine_length(tmp_path):
    result = train(
        compose_train(
            *TINY,
            "train.cosine_decay=true",
            "train.warmup_steps=0",
            "train.max_epochs=1",
            "dataset.val_size=0",
            "dataset.batch_size=500",
            f"run_dir={tmp_path}",
        )
    )
    state = load_checkpoint(result.last_ckpt)
    assert state["step"] == 3 and state["epoch"] == 1
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_more_bad_settings(tmp_path):
    assert "train.lr must be positive" in _cli_error(["train.lr=-1"], tmp_path)
    assert "train.ema_decay must be in (0, 1)" in _cli_error(["train.ema_decay=1.5"], tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert "is a file" in _cli_error([f"run_dir={blocker}"], tmp_path)


def test_a_failed_start_leaves_no_folder_behind(tmp_path):
    message = _cli_error(["dataset=mnist", "dataset.download=false"], tmp_path)
    assert "MNIST not found" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["dataset=mnist", "dataset.prepared=auto"],
         "dataset.prepared=auto does nothing for dataset=mnist: its options are batch_size, "
         "channels, download, eval_batch_size, hflip, image_size, n_bits, num_workers, root, "
         "split_seed, val_draw, val_size; leave dataset.prepared= out"),
        (["dataset.download=false"], "dataset.download=false does nothing for dataset=digits"),
        (["dataset=cifar10", "dataset.crop=100"], "dataset.crop=100 does nothing for "
         "dataset=cifar10"),
        (["+dataset.foo=1"], "dataset.foo=1 does nothing for dataset=digits"),
    ],
)  # fmt: skip
def test_dataset_options_the_source_does_not_read_are_refused(args, message, tmp_path):
    """The image sources share one schema, so Hydra itself accepts every source's keys."""
    status, _, err = run_console(train_main, [*args, "train.max_steps=1"], tmp_path)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err, err
    assert list(tmp_path.iterdir()) == []
