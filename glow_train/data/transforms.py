"""PIL image -> uint8 tensor: mode conversion, crop, resize or pad (no randomness).

Datasets do no quantisation, no float conversion and no random augmentation:
reducing to `n_bits` and the dequantisation noise belong to the objective
(`glow_train.likelihood.dequantize`) and the horizontal flip (`dataset.hflip`) to the
trainer, so bits/dim is computed the same way for every dataset and a resumed run
sees the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["ToUint8", "to_mode", "pil_to_uint8"]


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL image to `"L"` (1 channel) or `"RGB"` (3 channels).

    Transparent pixels (RGBA, LA, palette or colour-keyed transparency) are composited
    over black, so their hidden colour never leaks in. 16-bit and float greyscale is
    scaled/clipped to 8 bits rather than wrapped.
    """
    mode = "L" if channels == 1 else "RGB"
    if img.mode == mode:
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or values.max() > 255:
            values = values / 257.0
        img = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    elif "A" in img.getbands() or "transparency" in img.info:
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba)
    if img.mode not in ("L", "RGB"):  # 1, P, CMYK, YCbCr, ...: not all convert straight to L
        img = img.convert("RGB")
    return img.convert(mode)


def _resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is `size` (bicubic, antialiased), then centre-crop."""
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        new = (max(size, round(w * scale)), max(size, round(h * scale)))
        if new != (w, h):
            img = img.resize(new, Image.Resampling.BICUBIC)
    return _center_crop(img, size)


def _center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if (w, h) == (size, size):
        return img
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def _pad_or_resize(img: Image.Image, size: int) -> Image.Image:
    """Zero-pad a smaller image centred to `size` (MNIST 28 -> 32); shrink a larger one."""
    w, h = img.size
    if w <= size and h <= size:
        if (w, h) == (size, size):
            return img
        canvas = Image.new(img.mode, (size, size), 0)
        canvas.paste(img, ((size - w) // 2, (size - h) // 2))
        return canvas
    return _resize_center_crop(img, size)


def pil_to_uint8(img: Image.Image) -> Tensor:
    """PIL `L`/`RGB` image -> uint8 tensor `(H, W, C) -> (C, H, W)`."""
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


@dataclass(frozen=True)
class ToUint8:
    """PIL image -> uint8 `(channels, size, size)` tensor (picklable, for worker processes).

    Args:
        channels: 1 (greyscale) or 3 (RGB).
        size: output side in pixels.
        fit: `"pad"` zero-pads smaller images centred (fixed-size datasets);
            `"resize"` resizes the shorter side to `size` and centre-crops.
        crop: optional centre crop (pixels) applied before fitting (CelebA's 148).
    """

    channels: int
    size: int
    fit: str = "resize"
    crop: int | None = None

    def __call__(self, img: Image.Image) -> Tensor:
        img = to_mode(img, self.channels)
        if self.crop is not None:
            img = _center_crop(img, min(self.crop, *img.size))
        if self.fit == "pad":
            img = _pad_or_resize(img, self.size)
        else:
            img = _resize_center_crop(img, self.size)
        return pil_to_uint8(img)
