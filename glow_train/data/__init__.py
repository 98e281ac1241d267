"""Datasets of uint8 images and the DataLoader factory.

``build_dataset(cfg.dataset, "train")`` gives ``(uint8 (C, H, W), int label)`` items;
``make_loader`` batches them. Quantisation to ``n_bits`` and dequantisation live in
:mod:`glow_train.likelihood`; the horizontal flip (``dataset.hflip``) in the trainer.
"""

from glow_train.data.datasets import (
    DATASET_NAMES,
    IMAGE_EXTENSIONS,
    ImageDataset,
    ImageFolder,
    TensorImageDataset,
    ToUint8,
    build_dataset,
    dataset_config,
    image_shape,
    load_digits_arrays,
    validate_dataset_config,
)
from glow_train.data.loader import make_loader

__all__ = [
    "DATASET_NAMES",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "ImageFolder",
    "TensorImageDataset",
    "ToUint8",
    "build_dataset",
    "dataset_config",
    "image_shape",
    "load_digits_arrays",
    "make_loader",
    "validate_dataset_config",
]
