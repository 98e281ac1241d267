"""Regenerate ``glow_train/data/digits.npz`` from scikit-learn's copy of the UCI digits.

The packaged file holds the 1,797 8x8 images of scikit-learn's ``load_digits()`` in
its order, with each pixel value ``v`` in ``0..16`` stored as the uint8 ``min(16 * v, 255)``,
and their labels. The glow-train runtime reads this file with numpy alone; only this
script needs scikit-learn (in the ``dev`` extra). See ``glow_train/data/DIGITS.md``.

Usage::

    python scripts/make_digits.py [--out glow_train/data/digits.npz]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "glow_train" / "data" / "digits.npz"


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)``: uint8 ``(1797, 8, 8)`` in ``0..255`` and uint8 ``(1797,)``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    values = np.asarray(bunch.images)  # float64 (1797, 8, 8), integers 0..16
    if values.min() < 0 or values.max() > 16 or not np.array_equal(values, np.round(values)):
        raise SystemExit("unexpected pixel values in sklearn's digits; expected integers 0..16")
    images = np.minimum(values.astype(np.int64) * 16, 255).astype(np.uint8)
    labels = np.asarray(bunch.target).astype(np.uint8)
    return images, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .npz path")
    args = parser.parse_args()
    images, labels = digits_arrays()
    np.savez_compressed(args.out, images=images, labels=labels)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(images)} images)")


if __name__ == "__main__":
    main()
