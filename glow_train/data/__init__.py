"""Data: one module per source, a registry, the batch type and the loader.

`build_dataset(cfg.dataset, "train")` gives `(item, int label)` pairs (uint8
`(C, H, W)` images for the image sources); `describe_dataset(cfg.dataset)` the
`DataSpec` (kind, shape, bit depth, classes) without loading anything;
`make_loader` batches items into `Batch` objects. Quantisation and
dequantisation belong to the objective (`glow_train.likelihood.dequantize`), the
horizontal flip (`dataset.hflip`) to the trainer.

Layout: `spec` (DataSpec, DataSource), `checks` (shared range checks),
`transforms` (PIL -> uint8), `images` (the dataset classes), `files`
(torchvision load errors and tidy-up), `digits` / `mnist` / `cifar10` /
`celeba` / `folder` (the image sources), `prepared` (an image source
decoded once into a uint8 array file), `csvfile` + `table` (numeric
columns of a CSV file: rows or time-series windows, `dataset=csv`),
`registry` (names; loading and checking configs), `batch`, `labels`, `loader`.
"""

from glow_train.data.batch import Batch, collate
from glow_train.data.digits import load_digits_arrays
from glow_train.data.folder import IMAGE_EXTENSIONS, ImageFolder
from glow_train.data.images import ImageDataset, TensorImageDataset
from glow_train.data.loader import make_loader
from glow_train.data.registry import (
    DATASETS,
    SPLITS,
    build_dataset,
    dataset_config,
    dataset_names,
    describe_dataset,
    register_dataset,
    source,
    validate_dataset_config,
)
from glow_train.data.spec import DataSource, DataSpec
from glow_train.data.table import VectorDataset, load_table
from glow_train.data.transforms import ToUint8

__all__ = [
    "Batch",
    "DATASETS",
    "DataSource",
    "DataSpec",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "ImageFolder",
    "SPLITS",
    "TensorImageDataset",
    "VectorDataset",
    "ToUint8",
    "build_dataset",
    "collate",
    "dataset_config",
    "dataset_names",
    "describe_dataset",
    "load_digits_arrays",
    "load_table",
    "make_loader",
    "register_dataset",
    "source",
    "validate_dataset_config",
]
