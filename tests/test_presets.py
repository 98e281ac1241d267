"""Each experiment preset composes and trains a few steps on tiny data in the real format.

The presets' data pipelines, levels, bit depths, dequantisation and schedules run as
configured; only the depth K and the conditioner width are shrunk (a K=32, 512-wide
step at 256x256 takes tens of seconds on a CPU), and batches are two images.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import run_console
from PIL import Image
from test_data import celeba_root, cifar_root, existence_only, mnist_root  # noqa: F401

from glow_train.cli import train_main

SMALL = ["model.K=1", "model.hidden_channels=8", "train.max_steps=2", "train.progress=false"]
SMALL += ["dataset.batch_size=2", "dataset.num_workers=0", "train.init_samples=2"]
SMALL += ["train.eval_every_steps=2", "train.num_samples=4", "dataset.eval_batch_size=2"]


@pytest.fixture
def faces_256(tmp_path):
    """A folder of twelve 280x300 JPEG 'faces' (CelebA-HQ is a folder of images)."""
    root = tmp_path / "celeba-hq"
    root.mkdir()
    rng = np.random.default_rng(3)
    for i in range(12):
        pixels = rng.integers(0, 256, (300, 280, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i:05d}.jpg", quality=90)
    return root


def run_preset(tmp_path, experiment: str, *extra: str):
    run_dir = tmp_path / "run"
    args = [f"experiment={experiment}", *SMALL, f"run_dir={run_dir}", *extra]
    status, out, err = run_console(train_main, args, tmp_path)
    assert status == 0, err
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["step"] == 2 and np.isfinite(state["last_val_score"])
    return state["config"], out


def shape(cfg) -> tuple[int, int, int]:
    """(levels, image size, bits) of a run's saved config."""
    return cfg["model"]["L"], cfg["dataset"]["image_size"], cfg["dataset"]["n_bits"]


def test_mnist_preset_on_idx_files(tmp_path, mnist_root):  # noqa: F811
    root, _ = mnist_root
    cfg, out = run_preset(tmp_path, "mnist", f"dataset.root={root}", "dataset.val_size=1")
    assert shape(cfg) == (2, 32, 8)
    assert "test bpd:" in out


def test_cifar10_preset_on_pickled_batches(tmp_path, cifar_root, monkeypatch):  # noqa: F811
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", existence_only)
    root, _ = cifar_root
    cfg, _ = run_preset(tmp_path, "cifar10", f"dataset.root={root}", "dataset.val_size=2")
    assert (cfg["model"]["L"], cfg["train"]["dequantization"]) == (3, "uniform")


def test_celeba_preset_on_aligned_jpegs(tmp_path, celeba_root, monkeypatch):  # noqa: F811
    monkeypatch.setattr("torchvision.datasets.celeba.check_integrity", existence_only)
    cfg, _ = run_preset(tmp_path, "celeba", f"dataset.root={celeba_root}", "dataset.val_size=1")
    assert shape(cfg) == (4, 64, 5)


def test_celeba_hq256_preset_on_a_folder_of_faces(tmp_path, faces_256):
    extra = [f"dataset.root={faces_256}", "dataset.val_size=2", "dataset.test_fraction=0.3"]
    cfg, _ = run_preset(tmp_path, "celeba_hq256", *extra)
    assert shape(cfg) == (6, 256, 5)
    assert cfg["model"]["coupling"] == "additive"
