"""Datasets and the loader, on files written in the real formats (no network)."""

from __future__ import annotations

import os
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from glow_train.data import (
    Batch,
    DataSpec,
    build_dataset,
    dataset_config,
    dataset_names,
    describe_dataset,
    load_digits_arrays,
    make_loader,
    source,
    validate_dataset_config,
)
from glow_train.errors import ConfigError, DataError, GlowError

# ----------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the idx format of the MNIST distribution (magic 0x08, ndim)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def existence_only(fpath, md5=None):
    """Stands in for torchvision's ``check_integrity``: the file exists, MD5 not checked."""
    return os.path.isfile(fpath)


def assert_item(item, shape):
    image, label = item
    assert image.dtype == torch.uint8 and tuple(image.shape) == shape
    assert isinstance(label, int)


# ----------------------------------------------------------------------------- configs


def test_packaged_configs_validate_and_carry_the_contract_keys():
    hflip = {"digits": False, "mnist": False, "cifar10": True, "celeba": True, "folder": True}
    for name in dataset_names():
        if source(name).kind != "image":
            continue  # the table source: tests/test_table.py
        cfg = dataset_config(name, root="/some/where") if name == "folder" else dataset_config(name)
        validate_dataset_config(cfg)
        assert cfg["name"] == name and cfg["hflip"] is hflip[name]
        for key in ("image_size", "channels", "n_bits", "batch_size", "eval_batch_size"):
            assert key in cfg
    assert describe_dataset(dataset_config("digits")) == DataSpec("image", (1, 8, 8), 4, 10)
    assert describe_dataset(dataset_config("mnist")) == DataSpec("image", (1, 32, 32), 8, 10)
    assert describe_dataset(dataset_config("cifar10")) == DataSpec("image", (3, 32, 32), 8, 10)
    assert describe_dataset(dataset_config("celeba")) == DataSpec("image", (3, 64, 64), 5, 0)
    folder = describe_dataset(dataset_config("folder"))  # no root needed
    assert folder.shape == (3, 64, 64) and folder.num_dims == 3 * 64 * 64
    assert dataset_config("celeba")["n_bits"] == 5 and dataset_config("celeba")["crop"] == 148


def test_default_root_follows_glow_data(monkeypatch):
    monkeypatch.setenv("GLOW_DATA", "/datasets")
    assert dataset_config("cifar10")["root"] == "/datasets/cifar10"
    monkeypatch.delenv("GLOW_DATA")
    assert dataset_config("cifar10")["root"] == "data/cifar10"


def test_dictconfig_is_accepted():
    cfg = OmegaConf.create(dataset_config("digits"))
    OmegaConf.set_struct(cfg, True)
    assert len(build_dataset(cfg, "test")) == 297


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'.*digits, mnist"):
        build_dataset(dataset_config("digits", name="imagenet"), "train")


@pytest.mark.parametrize("n_bits", [0, 9, 4.5, True])
def test_n_bits_out_of_range(n_bits):
    with pytest.raises(ConfigError, match="n_bits"):
        validate_dataset_config(dataset_config("digits", n_bits=n_bits))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("image_size", 0),
        ("image_size", -8),
        ("channels", 2),
        ("num_workers", -1),
        ("hflip", "maybe"),
    ],
)
def test_bad_values(key, value):
    with pytest.raises(ConfigError, match=f"dataset.{key}"):
        validate_dataset_config(dataset_config("digits", **{key: value}))


@pytest.mark.parametrize("fraction", [-0.1, 1.0, "a"])
def test_bad_test_fraction(fraction, tmp_path):
    with pytest.raises(ConfigError, match="test_fraction"):
        validate_dataset_config(dataset_config("folder", root=tmp_path, test_fraction=fraction))


def test_bad_split():
    with pytest.raises(ConfigError, match="unknown split 'valid'"):
        build_dataset(dataset_config("digits"), "valid")


def test_config_errors_are_value_errors_and_glow_errors():
    with pytest.raises(ValueError):
        validate_dataset_config(dataset_config("digits", n_bits=0))
    assert issubclass(DataError, GlowError)


# ------------------------------------------------------------------------------ digits


def test_digits_split_counts_and_values():
    train = build_dataset(dataset_config("digits", val_size=0), "train")
    test = build_dataset(dataset_config("digits"), "test")
    assert (len(train), len(test)) == (1500, 297)
    assert train.num_classes == 10
    assert_item(train[0], (1, 8, 8))
    images = torch.cat([train.images, test.images])
    allowed = set(range(0, 256, 16)) | {255}
    assert set(images.unique().tolist()) <= allowed and images.max() == 255
    labels = torch.cat([train.labels, test.labels])
    assert set(labels.tolist()) == set(range(10))


def test_digits_match_scikit_learn():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    bunch = sklearn_datasets.load_digits()
    images, labels = load_digits_arrays()
    expected = np.minimum(bunch.images.astype(np.int64) * 16, 255)
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(labels, bunch.target)
    test = build_dataset(dataset_config("digits"), "test")
    np.testing.assert_array_equal(test.images[:, 0].numpy(), expected[1500:])
    assert [test[i][1] for i in range(297)] == bunch.target[1500:].tolist()


def test_digits_pad_to_larger_size():
    images, _ = load_digits_arrays()
    big = build_dataset(dataset_config("digits", image_size=12), "train")
    image = big[0][0]
    assert image.shape == (1, 12, 12)
    np.testing.assert_array_equal(image[0, 2:10, 2:10].numpy(), images[0])
    assert image.sum() == int(images[0].astype(np.int64).sum())  # the border is zero


def test_validation_images_are_held_out_of_train_by_seed():
    cfg = dataset_config("digits", val_draw="random")  # val_size: 200
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert (len(train), len(val)) == (1300, 200) and val.num_classes == 10
    picked = set(val.indices)
    assert picked.isdisjoint(train.indices) and picked | set(train.indices) == set(range(1500))
    assert set(build_dataset(cfg, "val").indices) == picked  # the same seed, the same images
    other = build_dataset({**cfg, "split_seed": 1}, "val")
    assert set(other.indices) != picked
    assert len(build_dataset({**cfg, "val_size": 0.1}, "val")) == 150
    with pytest.raises(ConfigError, match="no validation split"):
        build_dataset({**cfg, "val_size": 0}, "val")
    with pytest.raises(ConfigError, match="leaves no training images"):
        build_dataset({**cfg, "val_size": 1500}, "train")
    with pytest.raises(ConfigError, match="val_size must be a fraction"):
        build_dataset({**cfg, "val_size": 2.5}, "train")


def test_digits_validate_on_the_last_training_images_by_default():
    cfg = dataset_config("digits")  # val_draw: last
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert val.indices == list(range(1300, 1500)) and train.indices == list(range(1300))
    assert torch.equal(val[0][0], build_dataset({**cfg, "val_size": 0}, "train")[1300][0])
    assert build_dataset({**cfg, "split_seed": 5}, "val").indices == val.indices  # no seed
    assert len(build_dataset({**cfg, "val_size": 0.1}, "val")) == 150
    with pytest.raises(ConfigError, match="val_draw must be random or last"):
        build_dataset({**cfg, "val_draw": "first"}, "train")


def test_digits_epoch_through_loader():
    train = build_dataset(dataset_config("digits", val_size=0), "train")
    batches = list(make_loader(train, 64))
    assert len(batches) == 24  # ceil(1500 / 64)
    batch = batches[0]
    assert isinstance(batch, Batch) and len(batch) == 64
    assert batch.x.dtype == torch.uint8 and batch.x.shape == (64, 1, 8, 8)
    assert batch.y.dtype == torch.int64 and batch.y.tolist() == [train[i][1] for i in range(64)]
    assert sum(len(b) for b in batches) == 1500


# ------------------------------------------------------------------------------- MNIST


@pytest.fixture
def mnist_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = {}
    for prefix, n in (("train", 5), ("t10k", 3)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        data[prefix] = (images, labels)
    return tmp_path, data


def test_mnist_from_idx_files_padded_to_32(mnist_root):
    root, data = mnist_root
    cfg = dataset_config("mnist", root=str(root), download=False, val_size=0)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert (len(train), len(test)) == (5, 3) and train.num_classes == 10
    for dataset, (images, labels) in ((train, data["train"]), (test, data["t10k"])):
        for i in range(len(dataset)):
            image, label = dataset[i]
            assert image.dtype == torch.uint8 and image.shape == (1, 32, 32)
            np.testing.assert_array_equal(image[0, 2:30, 2:30].numpy(), images[i])
            assert image.sum() == int(images[i].astype(np.int64).sum())  # zero border
            assert label == labels[i]


def test_mnist_native_size(mnist_root):
    root, data = mnist_root
    cfg = dataset_config("mnist", root=root, download=False, image_size=28)
    dataset = build_dataset(cfg, "test")
    np.testing.assert_array_equal(dataset[1][0][0].numpy(), data["t10k"][0][1])


def test_mnist_from_the_published_gz_files(mnist_root, tmp_path):
    """`MNIST/raw/` with the `.gz` files alone (as published, as torchvision reads them):
    decompressed beside them on first use, the `.gz` kept; a broken `.gz` is one line."""
    import gzip

    root, data = mnist_root
    raw = root / "MNIST" / "raw"
    for idx in list(raw.iterdir()):
        (raw / f"{idx.name}.gz").write_bytes(gzip.compress(idx.read_bytes()))
        idx.unlink()
    packed = {p.name: p.read_bytes() for p in raw.iterdir()}
    cfg = dataset_config("mnist", root=str(root), download=False, image_size=28)
    dataset = build_dataset(cfg, "test")
    np.testing.assert_array_equal(dataset[1][0][0].numpy(), data["t10k"][0][1])
    assert all((raw / name).read_bytes() == body for name, body in packed.items())
    (raw / "train-images-idx3-ubyte").unlink()
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"cannot decompress .*train-images-idx3-ubyte.gz"):
        build_dataset(cfg, "train")
    assert sorted(p.name for p in raw.iterdir() if not p.name.endswith(".gz")) == [
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "train-labels-idx1-ubyte",
    ]


def test_mnist_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"MNIST not found under .*raw.*dataset.download=true"):
        build_dataset(dataset_config("mnist", root=tmp_path, download=False), "train")


def test_mnist_download_failure_is_one_clear_error(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    # A mirror that cannot serve the files, like a machine without network.
    monkeypatch.setattr(MNIST, "mirrors", [(tmp_path / "nowhere").as_uri() + "/"])
    with pytest.raises(DataError, match="could not download or read MNIST") as info:
        build_dataset(dataset_config("mnist", root=tmp_path / "m", download=True), "train")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "m").exists()  # no empty folders left by the failed download


def test_mnist_corrupt_idx(mnist_root):
    root, _ = mnist_root
    (root / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(DataError, match="could not read MNIST"):
        build_dataset(dataset_config("mnist", root=root, download=False), "train")


# ---------------------------------------------------------------------------- CIFAR-10


@pytest.fixture
def cifar_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(2, 3072), dtype=np.uint8)  # rows: R, G, B planes
        labels = rng.integers(0, 10, size=2).tolist()
        entry = {"batch_label": name, "labels": labels, "data": data, "filenames": ["a", "b"]}
        (folder / name).write_bytes(pickle.dumps(entry))
        batches[name] = (data, labels)
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return tmp_path, batches


def test_cifar10_from_pickled_batches(cifar_root, monkeypatch):
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", existence_only)
    root, batches = cifar_root
    cfg = dataset_config("cifar10", root=root, download=False, val_size=0)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert (len(train), len(test)) == (10, 2) and train.num_classes == 10
    data, labels = batches["data_batch_3"]
    image, label = train[5]  # batch 3, second image
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    np.testing.assert_array_equal(image.numpy(), data[1].reshape(3, 32, 32))
    assert label == labels[1]
    data, labels = batches["test_batch"]
    np.testing.assert_array_equal(test[0][0].numpy(), data[0].reshape(3, 32, 32))


def test_cifar10_missing(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-10 not found under .*cifar-10-batches-py"):
        build_dataset(dataset_config("cifar10", root=tmp_path, download=False), "train")


def test_cifar10_incomplete(cifar_root):
    root, _ = cifar_root
    (root / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError, match="incomplete.*data_batch_4"):
        build_dataset(dataset_config("cifar10", root=root, download=False), "test")


def test_cifar10_checksum_failure(cifar_root):
    root, _ = cifar_root  # the fake batches do not match the real MD5 sums
    with pytest.raises(DataError, match="fails its MD5 checksum.*download=true"):
        build_dataset(dataset_config("cifar10", root=root, download=False), "train")


# ------------------------------------------------------------------------------ CelebA

CELEBA_PARTITION = {"000001.jpg": 0, "000002.jpg": 0, "000003.jpg": 0, "000004.jpg": 1}
CELEBA_PARTITION |= {"000005.jpg": 2, "000006.jpg": 2}


@pytest.fixture
def celeba_root(tmp_path):
    folder = tmp_path / "celeba"
    images = folder / "img_align_celeba"
    images.mkdir(parents=True)
    names = list(CELEBA_PARTITION)
    for name in names:
        # A white 148x148 square centred on a black 178x218 aligned face.
        img = Image.new("RGB", (178, 218), (0, 0, 0))
        img.paste((255, 255, 255), (15, 35, 163, 183))
        img.save(images / name, quality=95)
    attr_names = ["Smiling", "Young"]
    lines = {
        "list_eval_partition.txt": [f"{n} {p}" for n, p in CELEBA_PARTITION.items()],
        "identity_CelebA.txt": [f"{n} {i + 100}" for i, n in enumerate(names)],
        "list_attr_celeba.txt": [str(len(names)), " ".join(attr_names)]
        + [f"{n}  1 -1" for n in names],
        "list_bbox_celeba.txt": [str(len(names)), "image_id x_1 y_1 width height"]
        + [f"{n} 95 71 226 313" for n in names],
        "list_landmarks_align_celeba.txt": [
            str(len(names)),
            "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
            "leftmouth_x leftmouth_y rightmouth_x rightmouth_y",
        ]
        + [f"{n} 69 109 106 113 77 142 73 152 108 154" for n in names],
    }
    for filename, rows in lines.items():
        (folder / filename).write_text("\n".join(rows) + "\n")
    return tmp_path


def test_celeba_partitions_crop_and_resize(celeba_root, monkeypatch):
    monkeypatch.setattr("torchvision.datasets.celeba.check_integrity", existence_only)
    cfg = dataset_config("celeba", root=celeba_root, image_size=16, val_size=0)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert (len(train), len(test)) == (3, 2) and train.num_classes == 0
    image, label = test[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 16, 16) and label == -1
    assert image.min() > 200  # the 148 crop keeps only the white square
    uncropped = build_dataset({**cfg, "crop": None}, "train")[0][0]
    assert uncropped.min() < 50  # without it the black margin shows


def test_celeba_missing_files_say_where_to_put_them(celeba_root):
    (celeba_root / "celeba" / "identity_CelebA.txt").unlink()
    with pytest.raises(DataError, match=r"missing identity_CelebA.txt.*img_align_celeba.zip"):
        build_dataset(dataset_config("celeba", root=celeba_root), "train")
    with pytest.raises(DataError, match=r"CelebA not found.*img_align_celeba/"):
        build_dataset(dataset_config("celeba", root=celeba_root / "elsewhere"), "train")


def test_celeba_checksum_failure(celeba_root):
    with pytest.raises(DataError, match="fail their MD5 checksums"):
        build_dataset(dataset_config("celeba", root=celeba_root), "test")


# ------------------------------------------------------------------------------ folder


@pytest.fixture
def image_tree(tmp_path):
    root = tmp_path / "images"
    (root / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (40, 24), (10, 200, 30)).save(root / "rgb.png")
    Image.new("L", (20, 50), 128).save(root / "a" / "gray.JPG", quality=95)
    # Fully transparent red: must come out black, not red.
    Image.new("RGBA", (30, 30), (255, 0, 0, 0)).save(root / "a" / "b" / "clear.PNG")
    palette = Image.new("P", (17, 23), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.save(root / "a" / "pal_transparent.png", transparency=0)
    blue = Image.new("P", (25, 25), 1)
    blue.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    blue.save(root / "a" / "b" / "pal.bmp")
    Image.new("RGB", (64, 48), (255, 255, 0)).save(root / "yellow.webp", lossless=True)
    # A truncated JPEG and PNG, an image extension on a text file, and a non-image file.
    for name, fmt in (("cut.jpg", "JPEG"), ("cut.png", "PNG")):
        full = tmp_path / f"full.{fmt.lower()}"
        noise = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(full, format=fmt)
        data = full.read_bytes()
        (root / name).write_bytes(data[: len(data) // 2])
    (root / "a" / "notes.jpeg").write_text("not an image")
    (root / "README.txt").write_text("ignored")
    return root


READABLE = {"rgb.png", "a/gray.JPG", "a/b/clear.PNG", "a/pal_transparent.png", "a/b/pal.bmp"}
READABLE |= {"yellow.webp"}


def folder_cfg(root, **overrides):
    settings = {"root": str(root), "image_size": 16, "test_fraction": 0.0, **overrides}
    return dataset_config("folder", **settings)


def test_folder_modes_sizes_and_skipped_files(image_tree):
    with pytest.warns(UserWarning) as record:
        dataset = build_dataset(folder_cfg(image_tree), "train")
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 3" in message
    for name in ("cut.jpg", "cut.png", "a/notes.jpeg"):
        assert name in message
    names = {p.relative_to(image_tree).as_posix() for p in dataset.files}
    assert names == READABLE
    by_name = {
        p.relative_to(image_tree).as_posix(): dataset[i] for i, p in enumerate(dataset.files)
    }
    for item in by_name.values():
        assert_item(item, (3, 16, 16))
        assert item[1] == -1
    assert by_name["a/b/clear.PNG"][0].max() == 0  # transparency over black
    assert by_name["a/pal_transparent.png"][0].max() == 0
    assert by_name["a/b/pal.bmp"][0][:, 8, 8].tolist() == [0, 0, 255]
    assert by_name["rgb.png"][0][:, 8, 8].tolist() == [10, 200, 30]
    assert by_name["a/gray.JPG"][0][:, 8, 8].tolist() == [128, 128, 128]


def test_folder_grayscale_output(image_tree):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = build_dataset(folder_cfg(image_tree, channels=1), "train")
    for i in range(len(dataset)):
        assert_item(dataset[i], (1, 16, 16))


def test_folder_resize_shorter_side_then_centre_crop(tmp_path):
    img = np.zeros((20, 60, 3), dtype=np.uint8)  # 60 wide, 20 high
    img[:, 20:40] = 255  # a white centre third: exactly what the crop keeps
    Image.fromarray(img).save(tmp_path / "wide.png")
    image = build_dataset(folder_cfg(tmp_path, image_size=10), "train")[0][0]
    assert image.shape == (3, 10, 10)
    assert image[:, :, 1:-1].min() == 255  # interior of the kept third is untouched white


def test_folder_split_is_by_name_and_stable(tmp_path):
    for i in range(60):
        Image.new("L", (4, 4), i).save(tmp_path / f"img{i:03d}.png")
    cfg = folder_cfg(tmp_path, test_fraction=0.3, val_size=0)
    train = {p.name for p in build_dataset(cfg, "train").files}
    test = {p.name for p in build_dataset(cfg, "test").files}
    assert not train & test and len(train | test) == 60
    assert 5 <= len(test) <= 35
    # Removing and adding files moves no other file between the splits.
    for name in sorted(test)[:3] + sorted(train)[:3]:
        (tmp_path / name).unlink()
    for i in range(60, 80):
        Image.new("L", (4, 4), i).save(tmp_path / f"img{i:03d}.png")
    train2 = {p.name for p in build_dataset(cfg, "train").files}
    test2 = {p.name for p in build_dataset(cfg, "test").files}
    old = {f"img{i:03d}.png" for i in range(60)}
    assert train2 & old == train & old - set(sorted(train)[:3])
    assert test2 & old == test & old - set(sorted(test)[:3])


def test_folder_missing_or_empty(tmp_path):
    with pytest.raises(DataError, match=r"image folder .*nope does not exist"):
        build_dataset(folder_cfg(tmp_path / "nope"), "train")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no image files"):
        build_dataset(folder_cfg(tmp_path), "train")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.warns(UserWarning, match="broken.png"):
        with pytest.raises(DataError, match="no readable image"):
            build_dataset(folder_cfg(tmp_path), "train")


def test_folder_requires_root():
    with pytest.raises(ConfigError, match="dataset.root is required"):
        build_dataset(dataset_config("folder"), "train")


# ------------------------------------------------------------------------------ loader


def test_loader_options():
    dataset = build_dataset(dataset_config("digits"), "test")
    loader = make_loader(dataset, 8)
    assert not loader.pin_memory and not loader.persistent_workers
    assert make_loader(dataset, 8, device="cuda:0").pin_memory
    assert make_loader(dataset, 8, num_workers=2).persistent_workers
    assert not make_loader(dataset, 8, num_workers=2, persistent_workers=False).persistent_workers
    assert len(make_loader(dataset, 8, drop_last=True)) == 297 // 8


def test_loader_passes_samplers_through():
    dataset = build_dataset(dataset_config("digits"), "test")
    order = [5, 3, 1, 200]
    first, second = make_loader(dataset, 2, sampler=order)
    assert first.y.tolist() == [dataset[5][1], dataset[3][1]]
    assert second.y.tolist() == [dataset[1][1], dataset[200][1]]
    assert torch.equal(second.x[1], dataset[200][0])
    batches = list(make_loader(dataset, 999, batch_sampler=[[0, 1, 2], [7]]))
    assert [len(b) for b in batches] == [3, 1]
    with pytest.raises(ValueError):
        make_loader(dataset, 2, drop_last=True, batch_sampler=[[0, 1]])


def test_loader_with_worker_processes(image_tree):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = build_dataset(folder_cfg(image_tree), "train")
    loader = make_loader(dataset, 4, num_workers=2, persistent_workers=False)
    shapes = [tuple(batch.x.shape) for batch in loader]
    assert shapes == [(4, 3, 16, 16), (2, 3, 16, 16)]
