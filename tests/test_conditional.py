"""Class-conditional Glow: its density, its classifier head, training and sampling by class."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import brute_force_logdet, one_line_error, perturb, run_console
from PIL import Image

from glow_train import Glow
from glow_train.cli import eval_main, sample_main, train_main
from glow_train.data import build_dataset, dataset_config, describe_dataset
from glow_train.data.spec import DataSpec
from glow_train.errors import DataError
from glow_train.evaluation.ood import auroc
from glow_train.flows.priors import gaussian_log_prob
from glow_train.likelihood.loading import load_objective
from glow_train.likelihood.objective import build_objective
from glow_train.sampling import sample_images

SHAPE = dict(in_channels=1, image_size=8, K=2, L=2, hidden_channels=8, coupling="affine", lu=True)


def conditional_glow(num_classes=3) -> Glow:
    torch.manual_seed(0)
    return perturb(Glow(**SHAPE, num_classes=num_classes).double(), scale=0.2)


def test_conditional_density_is_the_unconditional_one_with_the_class_prior():
    """p(x|y) = the same flow with the top prior shifted by class y's offsets."""
    cond = conditional_glow()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64) - 0.5
    y = torch.tensor([0, 1, 2, 1])
    got = cond.log_prob(x, y)
    weights = {k: v for k, v in cond.state_dict().items() if "class_embedding" not in k}
    offsets = cond.top_prior.class_embedding.weight.detach()  # (classes, 2·C·H·W)
    shape = cond.top_prior.mean.shape
    for i in range(4):
        plain = Glow(**SHAPE).double()
        plain.load_state_dict(weights)
        d_mean, d_log_scale = offsets[y[i]].chunk(2)
        with torch.no_grad():
            plain.top_prior.mean += d_mean.view(shape)
            plain.top_prior.log_scale += d_log_scale.view(shape)
        expected = plain.log_prob(x[i : i + 1])
        torch.testing.assert_close(got[i : i + 1], expected, rtol=0, atol=1e-10)
    assert not torch.allclose(got, cond.log_prob(x, torch.tensor([2, 2, 0, 0])))


def test_per_channel_class_offsets_of_older_checkpoints_load_as_equal_per_position_ones():
    """Checkpoints written with one offset per channel (the paper's ycond) load into the
    per-element layout as the same offsets at every position: the same density."""
    cond = conditional_glow()
    prior = cond.top_prior
    c = prior.mean.shape[0]
    per_channel = torch.randn(3, 2 * c, dtype=torch.float64)
    old_state = {**cond.state_dict(), "top_prior.class_embedding.weight": per_channel}
    cond.load_state_dict(old_state)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64) - 0.5
    y = torch.tensor([0, 1, 2])
    latents, logdet = cond.encode(x, y)
    top = latents[-1]
    d_mean, d_log_scale = per_channel[y].view(3, 2 * c, 1, 1).chunk(2, dim=1)
    mean, log_scale = prior.mean + d_mean, prior.log_scale + d_log_scale  # broadcast: old way
    expected = gaussian_log_prob(top, mean, log_scale)
    _, by_prior = prior.params(y, 3)
    torch.testing.assert_close(by_prior, log_scale.expand_as(by_prior))
    torch.testing.assert_close(prior.log_prob(top, y), expected, rtol=0, atol=1e-10)


def test_conditional_log_determinant_against_the_brute_force_jacobian():
    cond = conditional_glow()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64) - 0.5
    y = torch.tensor([1, 2])
    _, logdet = cond.encode(x, y)
    for i in range(2):
        expected = brute_force_logdet(lambda v, i=i: flat_at(cond, v, y[i]), x[i : i + 1])
        torch.testing.assert_close(logdet[i : i + 1], expected, rtol=0, atol=1e-8)


def flat_at(flow, v, label):
    """All of ``flow``'s latents of ``v`` given ``label``, flattened: ``(B, D)``."""
    latents, _ = flow.encode(v, label.expand(v.shape[0]))
    return torch.cat([z.reshape(v.shape[0], -1) for z in latents], dim=1)


def test_conditional_round_trip_and_samples_by_class():
    cond = conditional_glow()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64) - 0.5
    y = torch.tensor([2, 0, 1])
    latents, _ = cond.encode(x, y)
    torch.testing.assert_close(cond.decode(latents, y), x, rtol=0, atol=1e-10)
    # at T=0 each image is its class's mode: equal within a class, different across
    modes = cond.sample(4, 0.0, y=torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(modes[0], modes[1])
    assert not torch.allclose(modes[0], modes[2])
    with pytest.raises(ValueError, match="class-conditional: pass the class labels"):
        cond.sample(2, 0.7)


def test_class_head_starts_uniform_and_adds_its_weighted_cross_entropy():
    """At initialisation p(y|z) is uniform: the loss grows by exactly w·D·log C nats."""
    torch.manual_seed(0)
    flow = Glow(**SHAPE, num_classes=5)
    spec = DataSpec("image", (1, 8, 8), 4, num_classes=5)
    objective = build_objective(flow, spec, "uniform", class_loss_weight=0.3)
    x = torch.randint(0, 16, (6, 1, 8, 8)).float()
    noise = objective.noise(x, torch.Generator().manual_seed(0))
    y = torch.arange(6) % 5
    plain, with_class = objective(x, noise, y), objective(x, noise, y, 0.3)
    expected = torch.full((6,), 0.3 * 64 * math.log(5))
    torch.testing.assert_close(with_class - plain, expected, rtol=0, atol=5e-4)  # float32 sums
    assert objective.config()["class_head"] == [flow.latent_shapes[-1][0], 5]


def test_folder_class_subfolders_are_labels(tmp_path):
    for name, colour in (("cats", 40), ("dogs", 200)):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("L", (10, 10), colour + i).save(tmp_path / name / f"{i}.png")
    cfg = dataset_config("folder", root=str(tmp_path), image_size=8, channels=1)
    cfg = {**cfg, "test_fraction": 0.0, "classes": True}
    assert describe_dataset(cfg).num_classes == 2
    data = build_dataset(cfg, "train")
    labels = sorted((int(data[i][0].float().mean() > 128), data[i][1]) for i in range(6))
    assert labels == [(0, 0)] * 3 + [(1, 1)] * 3  # dark = cats = 0, bright = dogs = 1
    Image.new("L", (10, 10), 0).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match="not inside a class sub-folder"):
        build_dataset(cfg, "train")


# ------------------------------------------------------- trained on digits, end to end

TRAIN = ["model.conditional=true", "train.class_loss_weight=0.1", "model.K=4", "model.L=2"]
TRAIN += ["model.hidden_channels=32", "model.dropout=0", "train.dequantization=uniform"]
TRAIN += ["train.max_steps=400", "train.warmup_steps=20", "train.lr=5e-3", "dataset.val_size=0"]
TRAIN += ["train.eval_every_steps=null", "train.sample_every=null", "train.progress=false"]
TRAIN += ["train.time_limit=null"]


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    """A class-conditional Glow trained for 400 steps on digits (about 20 s)."""
    folder = tmp_path_factory.mktemp("conditional")
    status, out, err = run_console(train_main, [*TRAIN, f"run_dir={folder / 'run'}"], folder)
    assert status == 0, err
    assert "10 classes: a model of p(x|y)" in out and "is of p(x|y)" in out
    return folder / "run"


def nearest_class_mean(images: torch.Tensor) -> torch.Tensor:
    """Classes of ``(n, 1, 8, 8)`` images in [0, 1] by the nearest mean training digit."""
    train = build_dataset(dataset_config("digits", val_size=0), "train")
    x = torch.stack([train[i][0] for i in range(len(train))]).float().flatten(1) / 255
    y = torch.tensor([train[i][1] for i in range(len(train))])
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    return torch.cdist(images.flatten(1).float(), means).argmin(1)


def test_the_trained_class_head_survives_the_checkpoint(conditional_run):
    state = torch.load(conditional_run / "last.pt", weights_only=True)
    for ema, weights in ((True, state["ema"]), (False, state["objective"])):
        objective, _ = load_objective(conditional_run / "last.pt", ema=ema)
        prefix = "module.class_head." if ema else "class_head."
        for key, value in objective.class_head.state_dict().items():
            assert torch.equal(value, weights[prefix + key]), key
        assert objective.class_head.linear.layer.weight.abs().sum() > 0  # trained, not zeros


def test_latent_modes_take_one_class_for_a_conditional_model(conditional_run, tmp_path):
    ckpt = f"ckpt={conditional_run}"
    for y in ("all", "2.5", "10"):
        args = [ckpt, "mode=interpolate", "a=0", "b=1", f"y={y}"]
        line = one_line_error(sample_main, args, tmp_path, "glow-sample")
        assert "y must be one class in 0..9 here" in line, line
    status, out, err = run_console(
        sample_main, [ckpt, "mode=interpolate", "a=0", "b=1", "y=4"], tmp_path
    )
    assert status == 0, err


def test_samples_are_of_the_requested_class_more_often_than_chance(conditional_run):
    objective, _ = load_objective(conditional_run / "last.pt")
    wanted = torch.arange(10).repeat_interleave(20)
    samples = sample_images(objective, 200, 0.5, seed=0, y=wanted)
    accuracy = (nearest_class_mean(samples) == wanted).float().mean().item()
    assert accuracy > 0.25, accuracy  # chance is 0.10


def test_glow_sample_by_class_and_glow_eval_of_p_x_given_y(conditional_run, tmp_path):
    ckpt = f"ckpt={conditional_run}"
    status, out, err = run_console(sample_main, [ckpt, "y=all", "n=6"], tmp_path)
    assert status == 0, err
    grid = Image.open(out.split()[0])
    assert out.split()[0].endswith("best_T0.7_yall.png")
    assert grid.size == (2 + 6 * 10, 2 + 10 * 10)  # a row of 6 per class, 8 px + 2 padding
    status, out, err = run_console(sample_main, [ckpt, "y=3", "n=4"], tmp_path)
    assert status == 0 and out.split()[0].endswith("best_T0.7_y3.png"), err
    for args, message in (
        (["y=10"], "y must be a class in 0..9 or all, got 10"),
        (["y=all", "layout=rows"], "y=all draws one row per class; use it with layout=grids"),
    ):
        line = one_line_error(sample_main, [ckpt, *args], tmp_path, "glow-sample")
        assert message in line
    status, out, err = run_console(eval_main, [f"ckpt={conditional_run}/last.pt"], tmp_path)
    assert status == 0, err
    assert "(of p(x|y): class-conditional)" in out
    summary = json.loads(Path(out.split("eval: ")[1].split()[0]).read_text())
    assert summary["conditional"] is True and 1 < summary["bpd"] < 4
    # beside it, the marginal p(x) = sum_y p(y) p(x|y): at most bpd(x|y) + log2(10)/D
    # (p(x) >= p(y) p(x|y) with p(y) = 1/10), and above it on average (the label helps)
    marginal = summary["bpd_marginal"]
    assert summary["class_prior"] == "uniform"
    assert summary["bpd"] < marginal <= summary["bpd"] + math.log2(10) / 64 + 1e-9
    assert f"test bpd of p(x) = sum_y p(y) p(x|y): {marginal:.4f} (p(y) uniform)" in out


def test_glow_eval_ood_of_a_conditional_model_goes_through_the_marginal(conditional_run, tmp_path):
    from test_ood import column, write_letters

    write_letters(tmp_path / "letters")
    ckpt = f"ckpt={conditional_run}/last.pt"
    for prior in ("uniform", "train"):
        args = [
            ckpt,
            f"ood={tmp_path / 'letters'}",
            f"class_prior={prior}",
            f"out={tmp_path / prior}",
        ]
        status, out, err = run_console(eval_main, [*args, "progress=false"], tmp_path)
        assert status == 0, err
        summary = json.loads((tmp_path / prior / "eval.json").read_text())
        assert summary["density"] == "marginal p(x)" and summary["class_prior"] == prior
        assert "AUROC by bpd: " in out and "scored by p(x) = sum_y p(y) p(x|y)" in out
        inside = column(tmp_path / prior / "per_image.csv")
        outside = column(tmp_path / prior / "ood_per_image.csv")
        assert (len(inside), len(outside)) == (summary["num_in"], 52)
        assert summary["auroc_bpd"] == pytest.approx(auroc(inside, outside), abs=1e-12)
    # the in-distribution figure is glow-eval's marginal figure (one scoring function)
    status, out, err = run_console(eval_main, [ckpt, "progress=false"], tmp_path)
    assert status == 0, err
    summary = json.loads(Path(out.split("eval: ")[1].split()[0]).read_text())
    ood = json.loads((tmp_path / "uniform" / "eval.json").read_text())
    assert ood["bpd_in"] == pytest.approx(summary["bpd_marginal"], abs=1e-12)
    line = one_line_error(eval_main, [ckpt, "class_prior=zipf"], tmp_path, "glow-eval")
    assert "class_prior must be one of uniform, train, got 'zipf'" in line


def test_class_options_refused_where_they_cannot_apply(tmp_path):
    line = one_line_error(train_main, ["model.conditional=true", "dataset=celeba"], tmp_path)
    assert "model.conditional=true needs labelled data" in line
    line = one_line_error(train_main, ["train.class_loss_weight=0.5"], tmp_path)
    assert "needs a class-conditional image model: set model.conditional=true" in line
    line = one_line_error(train_main, ["train.class_loss_weight=-1"], tmp_path)
    assert "train.class_loss_weight must be >= 0" in line
    # an unconditional model refuses y=
    run = tmp_path / "plain"
    args = ["model.K=1", "model.hidden_channels=8", "train.max_steps=2", "train.progress=false"]
    status, _, err = run_console(train_main, [*args, f"run_dir={run}"], tmp_path)
    assert status == 0, err
    line = one_line_error(sample_main, [f"ckpt={run}", "y=3"], tmp_path, "glow-sample")
    assert "y=3: this model is not class-conditional; train one with model.conditional=true" in line
