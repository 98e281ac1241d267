#!/usr/bin/env python
"""CelebA's items per second read by decoding (JPEG decode, 148 crop, resize) against
reading the prepared uint8 file (`dataset.prepared`), in one process.

It writes `--images` synthetic JPEGs at CelebA's aligned size (178x218, smooth random
colour fields, quality 95: about 15 KB each, twice CelebA's average) with the list files
torchvision's `CelebA` reads, all in the train partition, into a temporary folder;
prepares them once; then times both ways of reading every item, in alternation, and
prints the medians of `--repeats` passes and their ratio. `num_workers=0`: one process,
so the ratio is per core.

    python scripts/bench_prepared.py                   # 400 images, 64x64
    python scripts/bench_prepared.py --images 1000 --size 128
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
from PIL import Image, ImageFilter

from glow_train.data import build_dataset, dataset_config

LISTS = {
    "identity_CelebA.txt": lambda n: f"{n} 1",
    "list_attr_celeba.txt": lambda n: f"{n}  1",
    "list_bbox_celeba.txt": lambda n: f"{n} 95 71 226 313",
    "list_landmarks_align_celeba.txt": lambda n: f"{n} " + " ".join(["100"] * 10),
}
HEADERS = {
    "list_attr_celeba.txt": "Smiling",
    "list_bbox_celeba.txt": "image_id x_1 y_1 width height",
    "list_landmarks_align_celeba.txt": "lefteye_x lefteye_y righteye_x righteye_y nose_x "
    "nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y",
}


def write_celeba(root: Path, count: int, seed: int = 0) -> None:
    """`count` smooth random 178x218 JPEGs and CelebA's list files under `root/celeba`."""
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = [f"{i + 1:06d}.jpg" for i in range(count)]
    for name in names:
        coarse = rng.integers(0, 256, (28, 23, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((178, 218), Image.Resampling.BICUBIC)
        img = img.filter(ImageFilter.GaussianBlur(2))
        img.save(folder / "img_align_celeba" / name, quality=95)
    (folder / "list_eval_partition.txt").write_text("".join(f"{n} 0\n" for n in names))
    for filename, row in LISTS.items():
        head = [str(count), HEADERS[filename]] if filename in HEADERS else []
        (folder / filename).write_text("\n".join(head + [row(n) for n in names]) + "\n")


def items_per_second(dataset) -> float:
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return len(dataset) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        mock.patch("torchvision.datasets.celeba.check_integrity", lambda path, md5=None: True),
    ):
        root = Path(tmp)
        write_celeba(root, args.images)
        keys = {"root": str(root), "image_size": args.size, "val_size": 0, "num_workers": 0}
        decoded = build_dataset(dataset_config("celeba", prepared="off", **keys), "train")
        start = time.perf_counter()
        prepared = build_dataset(dataset_config("celeba", prepared="auto", **keys), "train")
        made = time.perf_counter() - start
        assert all((decoded[i][0] == prepared[i][0]).all() for i in range(len(decoded)))
        rates = {"decode": [], "prepared": []}
        for _ in range(args.repeats):
            rates["decode"].append(items_per_second(decoded))
            rates["prepared"].append(items_per_second(prepared))
    decode, read = (statistics.median(rates[k]) for k in ("decode", "prepared"))
    print(f"{args.images} images 178x218 -> {args.size}x{args.size}, one process")
    print(f"prepare once: {made:.2f} s ({args.images / made:,.0f} images/s)")
    print(f"decode:   {decode:10,.0f} images/s")
    print(f"prepared: {read:10,.0f} images/s  ({read / decode:,.0f}x decode)")


if __name__ == "__main__":
    main()
