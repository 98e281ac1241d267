"""Two processes under torchrun (gloo, CPU) train like one, and resume on one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from glow_train.data import build_dataset, dataset_config
from glow_train.evaluation.scoring import evaluate_objective
from glow_train.io.checkpoint import load_checkpoint
from glow_train.likelihood.loading import load_objective

WORKER = textwrap.dedent(
    """
    import json, os, sys, torch
    from hydra import compose, initialize_config_module
    from torch.nn.parallel import DistributedDataParallel as DDP
    from glow_train.training import train

    out = sys.argv[1]
    with initialize_config_module("glow_train.configs", version_base="1.3"):
        cfg = compose("train", overrides=sys.argv[2:])
    built, ddp_init = [], DDP.__init__
    def spy(self, *args, **kwargs):  # the settings of the DDP the trainer builds
        ddp_init(self, *args, **kwargs)
        built.append([self.gradient_as_bucket_view, self.static_graph,
                      getattr(self, "forward_sync_buffers", None)])
    DDP.__init__ = spy
    result = train(cfg)
    rank = int(os.environ["RANK"])
    torch.save(result.model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    with open(os.path.join(out, f"ddp{rank}.json"), "w") as f:
        json.dump(built, f)
    """
)

TINY = [
    "model.K=2",
    "model.hidden_channels=16",
    "train.time_limit=null",
    "train.warmup_steps=5",
    "train.eval_every_steps=10",
    "train.sample_every=null",
    "train.num_samples=4",
    "train.progress=false",
    "dataset.batch_size=16",
    "dataset.eval_batch_size=64",  # 5 test batches: ranks 0 and 1 both evaluate some
]


def test_two_process_training_matches_one_process_evaluation(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    runs = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(script), str(tmp_path), *TINY, "train.max_steps=20", f"run_dir={runs}/r"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # only rank 0 speaks: one summary, one run folder, one set of files
    assert proc.stdout.count("run folder:") == 1, proc.stdout
    assert "batch 16 x 2 process(es) = 32" in proc.stdout
    assert [p.name for p in runs.iterdir()] == ["r"]
    assert sorted(p.name for p in (runs / "r").iterdir()) == [
        ".glow-train.lock",  # rank 0's lock on the folder
        "best.pt",
        "config.yaml",
        "last.pt",
        "samples.png",
        "tb",
    ]
    assert len(list((runs / "r" / "tb").iterdir())) == 1  # one event file

    # identical parameters (and buffers) on both ranks after 20 steps
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key
    # ... with gradients as bucket views, a static graph and no per-step buffer broadcast
    for rank in (0, 1):
        assert json.loads((tmp_path / f"ddp{rank}.json").read_text()) == [[True, True, False]]

    # the trainer's sharded test bpd equals a single-process evaluation of the saved weights
    state = load_checkpoint(runs / "r" / "last.pt")
    assert state["step"] == 20 and state["world_size"] == 2
    objective, _ = load_objective(runs / "r" / "last.pt")
    test_set = build_dataset(dataset_config("digits"), "test")
    single = evaluate_objective(
        objective,
        test_set,
        batch_size=state["config"]["dataset"]["eval_batch_size"],
        device="cpu",
        seed=state["config"]["train"]["eval_seed"],
    )
    assert single.num_items == 297 and 0 < single.value < 5
    assert abs(single.value - state["last_test_score"]) < 1e-6

    # resume the two-process run on one process
    glow_train = Path(sys.executable).parent / "glow-train"
    resumed = subprocess.run(
        [str(glow_train), f"ckpt={runs / 'r' / 'last.pt'}", "train.max_steps=26"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "batch 16 x 1 process(es) = 16" in resumed.stdout
    after = load_checkpoint(runs / "r" / "last.pt")
    assert after["step"] == 26 and after["world_size"] == 1


@pytest.mark.slow  # the flags' all-reduce runs in the two-process test above at every step,
# and tests/test_train.py::test_time_limit_stops_the_run_with_a_checkpoint covers the clock
def test_time_limit_stops_every_rank_at_the_same_step(tmp_path):
    """Ranks start their clocks at different moments; they must still stop together."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    overrides = [*TINY, "train.eval_every_steps=null", "train.max_steps=100000"]
    proc = subprocess.run(
        [
            *cmd,
            str(script),
            str(tmp_path),
            *overrides,
            "train.time_limit=3s",
            f"run_dir={tmp_path}/r",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(v, rank1[k]) for k, v in rank0.items())
    assert 0 < load_checkpoint(tmp_path / "r" / "last.pt")["step"] < 100000


def test_two_processes_train_a_table_like_one(tmp_path):
    """Vectors take the same DDP path: one group, one run folder, one samples.csv,
    identical weights on both ranks, and the sharded test figure of a single process."""
    rng = torch.Generator().manual_seed(0)
    rows = torch.randn(600, 3, generator=rng) @ torch.tensor(
        [[1.0, 0.5, 0], [0, 1, 0.3], [0, 0, 2]]
    )
    path = tmp_path / "t.csv"
    path.write_text(
        "a,b,c\n" + "".join(",".join(f"{v:.6f}" for v in r) + "\n" for r in rows.tolist())
    )
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    runs = tmp_path / "runs"
    overrides = [
        "dataset=csv",
        f"dataset.path={path}",
        "dataset.batch_size=32",
        "dataset.eval_batch_size=50",
        "model=glow1d",
        "model.K=2",
        "model.hidden_features=16",
        "train.time_limit=null",
        "train.warmup_steps=5",
        "train.eval_every_steps=null",
        "train.sample_every=null",
        "train.num_samples=4",
        "train.progress=false",
        "train.max_steps=12",
        f"run_dir={runs}/r",
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(script), str(tmp_path), *overrides],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run folder:") == 1 and "x 2 process(es)" in proc.stdout
    assert "samples.csv" in {p.name for p in (runs / "r").iterdir()}
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key
    state = load_checkpoint(runs / "r" / "last.pt")
    objective, _ = load_objective(runs / "r" / "last.pt")
    single = evaluate_objective(
        objective,
        build_dataset(state["config"]["dataset"], "test"),
        batch_size=50,
        device="cpu",
        seed=state["config"]["train"]["eval_seed"],
    )
    assert single.metric == "nats_per_dim" and single.num_items == 120
    assert abs(single.value - state["last_test_score"]) < 1e-6
