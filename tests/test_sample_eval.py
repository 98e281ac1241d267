"""glow-sample and glow-eval: grids, determinism, bits/dim against the public API, CLI."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_line_error, run_console
from hydra import compose, initialize_config_module
from PIL import Image

from glow_train import Glow, bits_per_dim, preprocess
from glow_train.cli import eval_main, sample_main, train_main
from glow_train.data import build_dataset
from glow_train.errors import CheckpointError, ConfigError, DataError
from glow_train.evaluation.figures import batch_seed, eval_dataset, evaluate
from glow_train.io.checkpoint import save_checkpoint
from glow_train.likelihood.loading import load_objective
from glow_train.sampling import sample, sample_images
from glow_train.training import train

BIN = Path(sys.executable).parent
DIGITS_TEST_IMAGES = 297


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny digits run (EMA on): its folder, last.pt and the checkpoint dict."""
    run_dir = tmp_path_factory.mktemp("run")
    overrides = [
        "model.K=2",
        "model.hidden_channels=16",
        "train.max_steps=30",
        "train.time_limit=null",
        "train.eval_every_steps=null",
        "train.sample_every=null",
        "train.progress=false",
        "train.dequantization=uniform",  # the independent computation below is uniform's
        "precision=fp32",  # the same checkpoint on every machine (auto: bf16 where native)
        "device=cpu",
        f"run_dir={run_dir}",
    ]
    with initialize_config_module("glow_train.configs", version_base="1.3"):
        cfg = compose("train", overrides)
    result = train(cfg)
    state = torch.load(result.last_ckpt, weights_only=True)
    assert state["ema"] is not None
    return run_dir, result.last_ckpt, state


@pytest.fixture
def ckpt(run, tmp_path):
    """A private copy of last.pt, so default output folders start empty."""
    path = tmp_path / "ckpt" / "last.pt"
    path.parent.mkdir()
    shutil.copy(run[1], path)
    return path


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


# ------------------------------------------------------------------------------ sampling


@pytest.mark.parametrize(
    ("n", "nrow", "padding", "size"),
    [
        (10, 4, 2, (4 * 10 + 2, 3 * 10 + 2)),  # (width, height): 3 rows of 4, 8 px images
        (5, None, 2, (3 * 10 + 2, 2 * 10 + 2)),  # nrow defaults to ceil(sqrt(5)) = 3
        (3, 8, 0, (3 * 8, 8)),  # fewer images than nrow: one short row
        (16, 4, 1, (4 * 9 + 1, 4 * 9 + 1)),
    ],
)
def test_grid_pixel_size(ckpt, tmp_path, n, nrow, padding, size):
    (path,) = sample(ckpt, 0.7, n=n, nrow=nrow, padding=padding, out=tmp_path / "g.png")
    assert path == tmp_path / "g.png"
    assert Image.open(path).size == size


def test_rows_layout_one_row_per_temperature(ckpt, tmp_path):
    (path,) = sample(ckpt, [0, 0.5, 1.0], n=4, layout="rows", out=tmp_path)
    assert path.name == "last_rows_T0-0.5-1.png"
    assert Image.open(path).size == (4 * 10 + 2, 3 * 10 + 2)


def test_one_labelled_grid_per_temperature_next_to_the_checkpoint(ckpt):
    paths = sample(ckpt, [0, 0.5, 0.7, 1.0], n=4)
    assert [p.name for p in paths] == [
        "last_T0.png",
        "last_T0.5.png",
        "last_T0.7.png",
        "last_T1.png",
    ]
    assert all(p.parent == ckpt.parent / "samples" for p in paths)
    assert files_under(ckpt.parent) == sorted([ckpt, *paths])


def test_same_seed_same_grid_other_seed_other_grid(ckpt, tmp_path):
    a = sample(ckpt, 1.0, n=8, seed=3, batch_size=3, out=tmp_path / "a.png")[0]
    b = sample(ckpt, 1.0, n=8, seed=3, batch_size=3, out=tmp_path / "b.png")[0]
    c = sample(ckpt, 1.0, n=8, seed=4, batch_size=3, out=tmp_path / "c.png")[0]
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_temperature_zero_decodes_the_prior_means(ckpt):
    objective, _ = load_objective(ckpt)
    cold = sample_images(objective, 6, 0.0, seed=0)
    assert torch.equal(cold, cold[:1].expand_as(cold))
    warm = sample_images(objective, 6, 1.0, seed=0)
    assert not torch.equal(warm, warm[:1].expand_as(warm))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"temperature": -0.1}, ConfigError, "temperature must be a number >= 0"),
        ({"temperature": [0.7, -1]}, ConfigError, "temperature"),
        ({"n": 0}, ConfigError, "n must be an integer >= 1"),
        ({"layout": "columns"}, ConfigError, "layout"),
    ],
)
def test_sample_rejects_bad_options_and_writes_nothing(ckpt, kwargs, error, match):
    with pytest.raises(error, match=match):
        sample(ckpt, **kwargs)
    assert files_under(ckpt.parent) == [ckpt]


def bad_checkpoints(ckpt: Path) -> dict[str, Path]:
    folder = ckpt.parent
    truncated = folder / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:4000])
    foreign = folder / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    text = folder / "notes.pt"
    text.write_text("hello\n")
    return {
        "missing": folder / "missing.pt",
        "truncated": truncated,
        "foreign": foreign,
        "text": text,
    }


def test_bad_checkpoints_are_one_checkpoint_error_and_no_file(ckpt):
    for path in bad_checkpoints(ckpt).values():
        before = files_under(ckpt.parent)
        with pytest.raises(CheckpointError, match=str(path.name)):
            sample(path)
        with pytest.raises(CheckpointError, match=str(path.name)):
            evaluate(path)
        assert files_under(ckpt.parent) == before


# ---------------------------------------------------------------------------- evaluation


def independent_bpd(ckpt: Path, seed: int, batch_size: int, draws: int) -> torch.Tensor:
    """Per-draw, per-image bits/dim with the public API and the documented noise schedule."""
    state = torch.load(ckpt, weights_only=True)
    model = Glow.from_checkpoint(ckpt, ema=True)
    n_bits = state["config"]["dataset"]["n_bits"]
    test = build_dataset(state["config"]["dataset"], "test")
    images = torch.stack([test[i][0] for i in range(len(test))])
    out = torch.empty(draws, len(test), dtype=torch.float64)
    with torch.no_grad():
        for d in range(draws):
            for i, start in enumerate(range(0, len(test), batch_size)):
                gen = torch.Generator().manual_seed(batch_seed(seed, d, i))
                x = preprocess(images[start : start + batch_size], n_bits, gen)
                bpd = bits_per_dim(model.log_prob(x), model.num_dims, n_bits)
                out[d, start : start + batch_size] = bpd.double()
    return out


def test_eval_equals_the_trainers_test_bpd(run, ckpt):
    report = evaluate(ckpt)
    assert report.summary["bpd"] == run[2]["last_test_score"]
    assert report.json_path == ckpt.parent / "eval" / "last_digits_test" / "eval.json"
    saved = json.loads(report.json_path.read_text())
    assert saved["bpd"] == run[2]["last_test_score"]
    assert saved["stderr"] is None and saved["ema"] is True
    assert (saved["dataset"], saved["split"], saved["num_items"]) == ("digits", "test", 297)
    assert (saved["draws"], saved["step"], saved["seed"]) == (1, 30, 1234)
    assert saved["checkpoint"] == str(ckpt.resolve())
    assert report.csv_path is None
    assert set(files_under(ckpt.parent)) == {ckpt, report.json_path}


def test_eval_equals_an_independent_api_computation(ckpt, tmp_path):
    report = evaluate(ckpt, seed=7, batch_size=100, per_image=True, out=tmp_path / "e")
    expected = independent_bpd(ckpt, seed=7, batch_size=100, draws=1)[0]
    assert report.summary["bpd"] == pytest.approx(expected.mean().item(), rel=1e-12, abs=0)
    with open(report.csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == DIGITS_TEST_IMAGES
    labels = [build_dataset(report.summary["dataset_config"], "test")[i][1] for i in range(297)]
    assert [int(r["index"]) for r in rows] == list(range(DIGITS_TEST_IMAGES))
    assert [int(r["label"]) for r in rows] == labels
    per_image = torch.tensor([float(r["bpd"]) for r in rows], dtype=torch.float64)
    torch.testing.assert_close(per_image, expected, rtol=1e-12, atol=0)


def test_draws_report_a_standard_error(ckpt, tmp_path):
    report = evaluate(ckpt, draws=4, batch_size=150, out=tmp_path / "e.json")
    per_draw = independent_bpd(ckpt, seed=1234, batch_size=150, draws=4).mean(dim=1)
    assert report.summary["bpd"] == pytest.approx(per_draw.mean().item(), rel=1e-12)
    stderr = (per_draw.std() / math.sqrt(4)).item()
    assert report.summary["stderr"] == pytest.approx(stderr, rel=1e-9)
    assert 0 < stderr < 0.05
    assert json.loads((tmp_path / "e.json").read_text())["stderr"] == report.summary["stderr"]


def test_ema_false_uses_the_raw_weights(run, ckpt, tmp_path):
    report = evaluate(ckpt, ema=False, out=tmp_path)
    assert report.summary["ema"] is False
    assert report.summary["bpd"] != run[2]["last_test_score"]  # that one used the EMA weights


def test_train_split(ckpt):
    report = evaluate(ckpt, split="train")
    assert report.summary["num_items"] == 1300 and report.summary["split"] == "train"
    val = evaluate(ckpt, split="val")  # the 200 held-out training images
    assert val.summary["num_items"] == 200 and val.summary["split"] == "val"
    assert report.json_path == ckpt.parent / "eval" / "last_digits_train" / "eval.json"


def test_dataset_override_must_match_the_model_shape(ckpt):
    with pytest.raises(ConfigError, match="1x16x16 images but the model .* takes 1x8x8"):
        evaluate(ckpt, dataset={"image_size": 16})
    with pytest.raises(ConfigError, match="n_bits"):
        evaluate(ckpt, n_bits=9)
    assert files_under(ckpt.parent) == [ckpt]


def test_eval_dataset_overrides_replace_only_the_keys_set():
    base = {"name": "mnist", "root": "data/mnist", "image_size": 8, "channels": 1, "n_bits": 4}
    cfg = eval_dataset(base, overrides={"root": "/mnt/mnist", "image_size": None})
    assert cfg == {**base, "root": "/mnt/mnist"}
    other = {"name": "folder", "root": "/a", "image_size": 8, "channels": 1, "n_bits": 8}
    assert eval_dataset(base, other | {"test_fraction": 0.5}, {"root": "/b"})["root"] == "/b"


def test_eval_config_accepts_dataset_group_and_single_keys():
    with initialize_config_module("glow_train.configs", version_base="1.3"):
        alone = compose("eval", ["dataset.root=/x"], return_hydra_config=True)
        group = compose("eval", ["dataset=mnist", "dataset.root=/y"], return_hydra_config=True)
    assert alone.dataset.root == "/x" and alone.hydra.runtime.choices.dataset is None
    assert alone.dataset.image_size is None
    assert group.dataset.root == "/y" and group.hydra.runtime.choices.dataset == "mnist"
    assert group.dataset.image_size == 32


# ----------------------------------------------------------------------- console scripts


def cli(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [str(BIN / name), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=120
    )


def cli_here(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The console script's entry point run in this process (no start-up cost)."""
    main = {"glow-sample": sample_main, "glow-eval": eval_main}[name]
    status, out, err = run_console(main, list(args), cwd)
    return subprocess.CompletedProcess([name, *args], status, out, err)


def test_glow_sample_console_script(ckpt, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = cli("glow-sample", f"ckpt={ckpt}", "temperature=[0,0.7]", "n=4", cwd=work)
    assert proc.returncode == 0, proc.stderr
    paths = [Path(line) for line in proc.stdout.splitlines()]
    assert paths == [ckpt.parent / "samples" / f"last_T{t}.png" for t in ("0", "0.7")]
    assert all(Image.open(p).size == (22, 22) for p in paths)
    assert list(work.iterdir()) == []


def test_glow_eval_console_script_with_moved_data(run, tmp_path):
    """A checkpoint of a folder dataset whose images moved: dataset.root= points at them."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(images / f"{i}.png")
    state = dict(run[2])
    folder = {"name": "folder", "root": str(tmp_path / "gone"), "image_size": 8, "channels": 1}
    folder |= {"n_bits": 4, "test_fraction": 0.5, "eval_batch_size": 16, "num_workers": 0}
    state["config"] = {**state["config"], "dataset": folder}
    ckpt = save_checkpoint(state, tmp_path / "run" / "last.pt")
    with pytest.raises(DataError):
        evaluate(ckpt)
    out = tmp_path / "out"
    args = [f"ckpt={ckpt}", f"dataset.root={images}", "per_image=true", f"out={out}"]
    proc = cli("glow-eval", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    bpd = json.loads((out / "eval.json").read_text())["bpd"]
    assert proc.stdout.splitlines()[-1] == f"test bpd: {bpd:.4f}"
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert 0 < len(rows) < 40 and all(r["label"] == "" for r in rows)


def test_glow_eval_console_script_prints_the_trainers_number(run, ckpt, tmp_path):
    proc = cli("glow-eval", f"ckpt={ckpt}", "progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"test bpd: {run[2]['last_test_score']:.4f}"
    assert (ckpt.parent / "eval" / "last_digits_test" / "eval.json").is_file()
    assert list(tmp_path.glob("*.json")) == []


@pytest.mark.parametrize(
    ("prog", "args", "message"),
    [
        ("glow-sample", ["temperature=-1"], "temperature must be a number >= 0"),
        ("glow-eval", ["dataset=mnist"], "1x32x32 images but the model"),
        ("glow-eval", ["dataset.download=false"], "dataset.download=false does nothing for "
         "dataset=digits: its options are batch_size, channels"),
    ],
)  # fmt: skip
def test_console_script_errors_are_one_line_and_leave_no_file(ckpt, tmp_path, prog, args, message):
    """The library tests cover every bad input; these check the CLI's way of reporting one."""
    before = files_under(tmp_path)
    proc = cli_here(prog, f"ckpt={ckpt}", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"{prog}: error: ")
    assert message in proc.stderr
    assert files_under(tmp_path) == before


def test_output_under_a_file_is_one_clear_error(ckpt, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    for name, args in (
        ("glow-sample", ["out=x.png"]),
        ("glow-eval", ["out=e.json", "progress=false"]),
    ):
        args[0] = f"out={blocker / args[0][4:]}"
        proc = cli_here(name, f"ckpt={ckpt}", *args, cwd=tmp_path)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{name}: error:"), proc.stderr


def test_bf16_sampling_matches_fp32_to_one_level(ckpt, tmp_path):
    """precision=bf16 (coupling networks under autocast) gives the fp32 images up to
    one 4-bit level on at least 99 % of the pixels."""
    args = dict(n=64, seed=5, out=tmp_path / "g.png", overwrite=True)
    full = pixels(sample(ckpt, 1.0, precision="fp32", **args)[0]).astype(int)
    half = pixels(sample(ckpt, 1.0, precision="bf16", **args)[0]).astype(int)
    step = 255 / 15  # one level of the 4-bit digits in 8-bit PNG values
    close = np.abs(full - half) <= step + 0.5
    assert close.mean() >= 0.99
    with pytest.raises(ConfigError, match="precision=fp16 is not one of auto, fp32, bf16"):
        sample(ckpt, 0.7, precision="fp16", out=tmp_path / "x.png")


def test_an_unknown_dataset_key_names_the_right_remedy_per_command(tmp_path):
    """glow-eval replaces single keys of the checkpoint's dataset: its hint names
    dataset=<name>, not resuming (glow-train's hint)."""
    ckpt = f"ckpt={tmp_path / 'run' / 'best.pt'}"
    line = one_line_error(eval_main, [ckpt, "dataset.name=foo"], tmp_path, "glow-eval")
    assert "dataset=<name>" in line and "resuming" not in line
    line = one_line_error(train_main, [ckpt, "model.spline_bins=3"], tmp_path)
    assert "when resuming a run of another dataset" in line
