"""CelebA prepared once into a uint8 array file (`dataset.prepared`): made once, read
without decoding, the same pixels as decoding, and a file that does not match refused."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from test_data import celeba_root, existence_only  # noqa: F401

from glow_train.data import build_dataset, dataset_config, make_loader
from glow_train.data.prepared import PreparedImages
from glow_train.errors import ConfigError, DataError

NAME = "celeba_{}_crop148_16x16x3.npy"


@pytest.fixture
def celeba(celeba_root, monkeypatch):  # noqa: F811
    monkeypatch.setattr("torchvision.datasets.celeba.check_integrity", existence_only)
    return celeba_root


def config(root, **keys):
    keys = {"image_size": 16, "num_workers": 0, "val_size": 0, **keys}
    return dataset_config("celeba", root=root, **keys)


def pixels(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def refuse_decoding(monkeypatch):
    def fail(self, index):
        raise AssertionError("a JPEG was decoded")

    monkeypatch.setattr("torchvision.datasets.CelebA.__getitem__", fail)


def test_prepared_once_then_read_without_decoding(celeba, monkeypatch):
    decoded = {
        s: pixels(build_dataset(config(celeba, prepared="off"), s)) for s in ("train", "test")
    }
    folder = celeba / "celeba"
    assert not list(folder.glob("*.npy"))  # off: nothing written
    first = {s: build_dataset(config(celeba, prepared="auto"), s) for s in ("train", "test")}
    for split, data in first.items():
        path = folder / NAME.format(split)
        assert isinstance(data, PreparedImages) and data.path == path
        assert np.load(path).shape == (len(decoded[split]), 16, 16, 3)
        assert torch.equal(pixels(data), decoded[split])
        assert [data[i][1] for i in range(len(data))] == [-1] * len(data)
    made = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("*.npy")}
    assert set(made) == {NAME.format("train"), NAME.format("test")}  # no temporary left

    refuse_decoding(monkeypatch)
    again = build_dataset(config(celeba), "train")  # prepared: auto, the preset's value
    assert torch.equal(pixels(again), decoded["train"])
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("*.npy")} == made
    batches = list(make_loader(again, 2, num_workers=1))  # a worker maps the file itself
    assert torch.equal(torch.cat([b.x for b in batches]), decoded["train"])
    with pytest.raises(AssertionError, match="decoded"):  # the patch does stop a decode
        build_dataset(config(celeba, prepared="off"), "train")[0]


def test_prepared_into_a_folder_of_its_own(celeba, tmp_path):
    cache = tmp_path / "cache"
    data = build_dataset(config(celeba, prepared=str(cache), val_size=1), "val")
    assert [p.name for p in cache.iterdir()] == [NAME.format("train")]  # val is of train
    assert not list((celeba / "celeba").glob("*.npy")) and len(data) == 1
    off = build_dataset(config(celeba, prepared=False, val_size=1), "val")  # YAML's bare off
    assert torch.equal(pixels(data), pixels(off))


@pytest.mark.parametrize(
    "damage, words",
    [
        (
            lambda p: np.save(p, np.zeros((3, 8, 8, 3), np.uint8)),
            r"holds \(3, 8, 8, 3\) uint8, while these images and settings give \(3, 16, 16, 3\)",
        ),
        (lambda p: np.save(p, np.zeros((3, 16, 16, 3), np.float32)), "float32"),
        (lambda p: os.truncate(p, os.path.getsize(p) - 10), r"auto\) is truncated, while"),
        (lambda p: p.write_bytes(b"not an array"), "no readable array"),
    ],
)
def test_a_prepared_file_that_does_not_match_is_refused(celeba, damage, words):
    cfg = config(celeba)
    build_dataset(cfg, "train")
    path = celeba / "celeba" / NAME.format("train")
    damage(path)
    before = path.read_bytes()
    with pytest.raises(DataError, match=words) as err:
        build_dataset(cfg, "train")
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "dataset.prepared=auto" in message
    assert "delete it" in message and "dataset.prepared=off" in message
    assert path.read_bytes() == before  # refused, not replaced


@pytest.mark.parametrize("value", [True, "", 3])
def test_prepared_takes_auto_off_or_a_folder(celeba, value):
    with pytest.raises(ConfigError, match="dataset.prepared must be auto, off or a folder"):
        build_dataset(config(celeba, prepared=value), "train")
