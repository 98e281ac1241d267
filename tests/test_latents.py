"""Latent space: interpolation, attribute directions and manipulation (glow-sample modes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import one_line_error, run_console
from PIL import Image
from test_data import celeba_root, existence_only  # noqa: F401

from glow_train.cli import sample_main, train_main
from glow_train.data import build_dataset, collate, dataset_config
from glow_train.errors import ConfigError
from glow_train.likelihood.loading import load_objective
from glow_train.sampling.latents import attribute_mask, decode, encode, interpolate

TRAIN = ["model.K=2", "model.hidden_channels=16", "train.max_steps=60", "train.warmup_steps=5"]
TRAIN += ["train.time_limit=null", "train.eval_every_steps=null", "train.sample_every=null"]
TRAIN += ["train.progress=false"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("latents")
    status, _, err = run_console(train_main, [*TRAIN, f"run_dir={folder / 'run'}"], folder)
    assert status == 0, err
    return folder / "run"


def test_interpolation_weights_and_exact_ends():
    a = [torch.randn(1, 4, 2, 2), torch.randn(1, 8, 1, 1)]
    b = [torch.randn(1, 4, 2, 2), torch.randn(1, 8, 1, 1)]
    for method in ("lerp", "slerp"):
        path = interpolate(a, b, 5, method)
        assert [tuple(z.shape) for z in path] == [(5, 4, 2, 2), (5, 8, 1, 1)]
        for z, za, zb in zip(path, a, b, strict=True):
            assert torch.equal(z[0], za[0]) and torch.equal(z[-1], zb[0])
    lerp = interpolate(a, b, 3, "lerp")
    torch.testing.assert_close(lerp[0][1], (a[0][0] + b[0][0]) / 2)
    # slerp keeps to the great circle: the midpoint's norm lies between the ends' for
    # equal-norm ends, where it equals them
    b_same = [
        z
        * (torch.cat([x.flatten() for x in a]).norm() / torch.cat([y.flatten() for y in b]).norm())
        for z in b
    ]
    mid = interpolate(a, b_same, 3, "slerp")
    norm = torch.cat([z[1].flatten() for z in mid]).norm()
    torch.testing.assert_close(norm, torch.cat([z.flatten() for z in a]).norm())
    # slerp at t = 1/4 against the formula on the whole latent
    flat_a = torch.cat([z.flatten() for z in a]).double()
    flat_b = torch.cat([z.flatten() for z in b]).double()
    omega = torch.arccos(flat_a @ flat_b / (flat_a.norm() * flat_b.norm()))
    quarter = torch.cat([z[1].flatten() for z in interpolate(a, b, 5, "slerp")]).double()
    expected = (torch.sin(0.75 * omega) * flat_a + torch.sin(0.25 * omega) * flat_b) / torch.sin(
        omega
    )
    torch.testing.assert_close(quarter, expected, rtol=0, atol=1e-5)
    # opposite or zero latents have no unique arc: the line instead, never nan
    for end in ([-z for z in a], [torch.zeros_like(z) for z in a]):
        path = interpolate(a, end, 3, "slerp")
        torch.testing.assert_close(path[0][1], (a[0][0] + end[0][0]) / 2)
    with pytest.raises(ConfigError, match="interp must be one of lerp, slerp"):
        interpolate(a, b, 3, "cubic")
    with pytest.raises(ConfigError, match="steps must be at least 2"):
        interpolate(a, b, 1, "lerp")


def test_encode_decode_reconstructs_the_images_exactly(run):
    objective, _ = load_objective(run / "last.pt")
    test = build_dataset(dataset_config("digits"), "test")
    batch = collate([test[i] for i in range(16)])
    images = decode(objective, encode(objective, batch.x))
    levels = (images * 15).round().to(torch.uint8)  # 4-bit grid: 0..15
    assert torch.equal(levels, torch.div(batch.x, 16, rounding_mode="floor"))


def read_strip(path, count: int, size: int = 8, padding: int = 2) -> list[np.ndarray]:
    """The ``count`` images of a one-row strip written by glow-sample (greyscale)."""
    strip = np.asarray(Image.open(path).convert("L"))
    step = size + padding
    return [
        strip[padding : padding + size, padding + i * step : padding + i * step + size]
        for i in range(count)
    ]


def digit_as_png(index: int) -> np.ndarray:
    image = build_dataset(dataset_config("digits"), "test")[index][0][0]
    return (torch.div(image, 16, rounding_mode="floor") * 17).numpy().astype(np.uint8)


def test_interpolate_strip_ends_are_the_inputs(run, tmp_path):
    for interp in ("lerp", "slerp"):
        out = tmp_path / f"{interp}.png"
        args = [f"ckpt={run}", "mode=interpolate", "a=3", "b=11", "steps=6", f"interp={interp}"]
        status, stdout, err = run_console(sample_main, [*args, f"out={out}"], tmp_path)
        assert status == 0 and stdout.split()[0] == str(out), err
        strip = read_strip(out, 6)
        assert np.array_equal(strip[0], digit_as_png(3))
        assert np.array_equal(strip[-1], digit_as_png(11))
        assert not np.array_equal(strip[2], strip[0])
    # an image file works as an end point too
    Image.fromarray(digit_as_png(5)).save(tmp_path / "five.png")
    args = [f"ckpt={run}", "mode=interpolate", f"a={tmp_path / 'five.png'}", "b=0", "steps=3"]
    status, stdout, err = run_console(sample_main, args, tmp_path)
    assert status == 0, err
    assert stdout.split()[0].endswith("samples/best_interp_lerp_five_test0.png")
    assert np.array_equal(read_strip(stdout.split()[0], 3)[0], digit_as_png(5))


def test_direction_then_manipulation_with_alpha_zero_is_the_image(run, tmp_path):
    status, stdout, err = run_console(
        sample_main, [f"ckpt={run}", "mode=direction", "attribute=0"], tmp_path
    )
    assert status == 0, err
    saved = torch.load(stdout.split()[0], weights_only=True)
    assert stdout.split()[0].endswith("directions/best_0.pt")
    train = build_dataset(dataset_config("digits", val_size=0), "train")
    zeros = sum(1 for i in range(len(train)) if train[i][1] == 0)
    assert (saved["count_with"], saved["count_without"]) == (zeros, len(train) - zeros)
    assert "direction of 0: mean latent of" in stdout
    args = [f"ckpt={run}", "mode=manipulate", "attribute=0", "image=4", "alpha=[-1,0,1]"]
    status, stdout, err = run_console(sample_main, args, tmp_path)
    assert status == 0, err
    strip = read_strip(stdout.split()[0], 3)
    assert np.array_equal(strip[1], digit_as_png(4))
    assert not np.array_equal(strip[2], strip[1])


def test_latent_mode_errors(run, tmp_path):
    ckpt = f"ckpt={run}"
    for args, message in (
        (["mode=interpolate", "a=1"], "mode=interpolate needs a= and b="),
        (["mode=interpolate", "a=1", "b=100000"], "test-set index 100000 is outside 0..296"),
        (["mode=interpolate", "a=1", "b=nothere.png"], "nothere.png is neither a test-set index"),
        (["mode=manipulate", "attribute=7", "image=1"], "no direction for 7 beside"),
        (["mode=direction", "attribute=cat"], "unknown attribute 'cat'; the attributes of this"),
        (["mode=warp"], "mode must be one of sample, interpolate, direction, manipulate"),
        (["mode=interpolate", "a=1", "b=2", "y=3"], "y=3: this model is not class-conditional"),
    ):
        line = one_line_error(sample_main, [ckpt, *args], tmp_path, "glow-sample")
        assert message in line, line


def test_celeba_attributes_by_name(celeba_root, monkeypatch):  # noqa: F811
    monkeypatch.setattr("torchvision.datasets.celeba.check_integrity", existence_only)
    from glow_train.data import source

    cfg = dataset_config("celeba", root=celeba_root, image_size=8)
    data = source("celeba").build(cfg, "train")
    name, mask = attribute_mask(data, "Smiling")
    assert name == "Smiling" and mask.tolist() == [True] * 3  # every fixture face smiles
    assert attribute_mask(data, "Young")[1].tolist() == [False] * 3
    with pytest.raises(ConfigError, match="unknown attribute 'Bald'; CelebA has Smiling, Young"):
        attribute_mask(data, "Bald")
