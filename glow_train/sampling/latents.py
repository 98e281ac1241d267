r"""Working in latent space: interpolation, attribute directions and manipulation.

An image `x` (uint8) is encoded at the centre of its quantisation bin,
$z = f(q/2^n - \tfrac12 + 2^{-n-1})$, as the list of every level's latent
`[z_1, …, z_L]`; decoding runs the flow backwards and quantises, so
`decode(encode(x)) == x` up to floating-point error far below one bin.

- **Interpolation** between `a` and `b` (all levels at once): linear,
  $z_t = (1-t)\,z_a + t\,z_b$, or spherical on the concatenated latent,
  $z_t = \frac{\sin((1-t)\Omega)}{\sin\Omega} z_a + \frac{\sin(t\Omega)}{\sin\Omega} z_b$
  with $\cos\Omega = \langle z_a, z_b\rangle / (|z_a|\,|z_b|)$; both give `z_a`
  and `z_b` exactly at `t = 0` and `t = 1`.
- **Attribute direction** (the paper's section 5.3 manipulation): the mean latent
  of the training images with an attribute minus the mean of those without,
  $d = \bar z_{+} - \bar z_{-}$; an edit is $z + \alpha d$, so
  $\alpha = 0$ is the image itself.

Attributes are the classes of labelled data (`attribute=3`, or a class folder's
name) or CelebA's 40 binary attributes (`attribute=Smiling`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from glow_train.data import Batch, build_dataset, collate, source
from glow_train.data.labels import dataset_labels
from glow_train.data.transforms import ToUint8
from glow_train.errors import ConfigError, DataError
from glow_train.likelihood.objective import Objective
from glow_train.sampling.images import class_index

__all__ = [
    "INTERPOLATIONS",
    "encode",
    "decode",
    "interpolate",
    "attribute_mask",
    "attribute_direction",
    "load_inputs",
]

INTERPOLATIONS = ("lerp", "slerp")


def _flow(objective: Objective):
    flow = objective.flow
    if not hasattr(flow, "encode") or objective.dequantizer.n_bits is None:
        raise ConfigError("latent-space modes need an image model (model=glow)")
    return flow


@torch.no_grad()
def encode(objective: Objective, images: Tensor, y: Tensor | None = None) -> list[Tensor]:
    """uint8 images `(B, C, H, W)` -> their latents at the bins' centres, one per level."""
    flow = _flow(objective)
    device = next(objective.parameters()).device
    x = objective.prepare(images.to(device)) + 0.5 / 2**objective.dequantizer.n_bits
    latents, _ = flow.encode(x, None if y is None else y.to(device))
    return latents


@torch.no_grad()
def decode(objective: Objective, latents: Sequence[Tensor], y: Tensor | None = None) -> Tensor:
    """Latents -> images as floats in `[0, 1]` on the data's grid, on CPU."""
    flow = _flow(objective)
    labels = None if y is None else y.to(latents[0].device)
    return objective.dequantizer.to_data(flow.decode(list(latents), labels)).cpu()


def interpolate(
    za: Sequence[Tensor], zb: Sequence[Tensor], steps: int, method: str = "lerp"
) -> list[Tensor]:
    """`steps` points from `za` to `zb` (both ends included), batched per level:
    each returned latent is `(steps, *shape)`. `za`/`zb`: one image's latents
    (batch size 1)."""
    if method not in INTERPOLATIONS:
        raise ConfigError(f"interp must be one of {', '.join(INTERPOLATIONS)}, got {method!r}")
    if steps < 2:
        raise ConfigError(f"steps must be at least 2 (the two end points), got {steps}")
    t = torch.linspace(0, 1, steps, dtype=torch.float64)
    if method == "lerp":
        wa, wb = 1 - t, t
    else:
        a = torch.cat([z.flatten().double() for z in za])
        b = torch.cat([z.flatten().double() for z in zb])
        norms = a.norm() * b.norm()
        omega = torch.arccos((a @ b / norms).clamp(-1, 1)) if norms > 0 else torch.tensor(0.0)
        if float(torch.sin(omega)) < 1e-6:  # parallel, opposite or zero: no unique arc
            wa, wb = 1 - t, t
        else:
            wa, wb = (
                torch.sin((1 - t) * omega) / torch.sin(omega),
                torch.sin(t * omega) / torch.sin(omega),
            )
    out = []
    for a, b in zip(za, zb, strict=True):
        shape = (steps,) + (1,) * (a.dim() - 1)
        mix = wa.view(shape).to(a) * a + wb.view(shape).to(a) * b
        mix[0], mix[-1] = a[0], b[0]  # the ends exactly, whatever the rounding
        out.append(mix)
    return out


# ------------------------------------------------------------------------- attributes


def attribute_mask(
    dataset: Dataset, attribute: str, limit: int | None = None
) -> tuple[str, Tensor]:
    """`(attribute name, bool (N,))`: which of the first `limit` items of `dataset`
    have `attribute`.

    CelebA (torchvision's `CelebA`) offers its 40 attributes by name; labelled data
    offers its classes by index (`"3"`) or, for class folders, by folder name.
    """
    limit = len(dataset) if limit is None else limit
    inner = getattr(dataset, "source", None)
    names = [n for n in getattr(inner, "attr_names", []) if n]
    if names:
        if attribute not in names:
            raise ConfigError(f"unknown attribute {attribute!r}; CelebA has {', '.join(names)}")
        return attribute, inner.attr[:limit, names.index(attribute)].bool()
    num_classes = int(getattr(dataset, "num_classes", 0))
    if num_classes < 1:
        raise ConfigError(
            "attributes need labelled data (classes, or CelebA's attributes); this dataset has none"
        )
    classes = list(getattr(dataset, "class_names", [])) or [str(c) for c in range(num_classes)]
    if str(attribute) not in classes:
        raise ConfigError(
            f"unknown attribute {attribute!r}; the attributes of this data are its classes: "
            f"{', '.join(classes)}"
        )
    return str(attribute), dataset_labels(dataset, limit) == classes.index(str(attribute))


@torch.no_grad()
def attribute_direction(
    objective: Objective, dataset: Dataset, attribute: str, max_images: int, batch_size: int
) -> dict[str, Any]:
    """The mean latent of the first `max_images` items with `attribute` minus that of
    those without it, per level: `{"attribute", "levels": [Tensor, …], "count_with",
    "count_without"}`."""
    n = min(len(dataset), max_images)
    name, mask = attribute_mask(dataset, attribute, n)
    with_, without = int(mask.sum()), int((~mask).sum())
    if with_ == 0 or without == 0:
        raise DataError(
            f"attribute {name}: {with_} of the first {n} images have it; a direction needs "
            "images with and without it"
        )
    pos: list[Tensor] = []  # per level: the sum of the latents with the attribute
    neg: list[Tensor] = []  # ... and without it
    for start in range(0, n, batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, n))])
        z = encode(objective, batch.x, objective.labels(batch))
        part = mask[start : start + len(batch.x)].to(z[0].device)
        for i, level in enumerate(z):
            s_pos, s_neg = level[part].double().sum(0), level[~part].double().sum(0)
            if i < len(pos):
                pos[i], neg[i] = pos[i] + s_pos, neg[i] + s_neg
            else:
                pos.append(s_pos)
                neg.append(s_neg)
    levels = [(p / with_ - q / without).float().cpu() for p, q in zip(pos, neg, strict=True)]
    return {"attribute": name, "levels": levels, "count_with": with_, "count_without": without}


# ------------------------------------------------------------------------------ inputs


def load_inputs(refs: Sequence[Any], data_cfg: dict[str, Any], y: Any, num_classes: int) -> Batch:
    """The images `refs` name: a test-set index (an integer) or an image file, as the
    checkpoint's data (size, channels), with their labels: `y` when given, else a
    test image's own (a file of a class-conditional model needs `y`)."""
    test: Dataset | None = None
    items = []
    for ref in refs:
        text = str(ref)
        if text.lstrip("-").isdigit():
            test = test if test is not None else build_dataset(data_cfg, "test")
            index = int(text)
            if not 0 <= index < len(test):
                raise ConfigError(f"test-set index {index} is outside 0..{len(test) - 1}")
            items.append(test[index])
            continue
        path = Path(os.path.expanduser(text))
        if not path.is_file():
            raise ConfigError(f"{text} is neither a test-set index nor an image file")
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                img.load()
                image = ToUint8(int(data_cfg["channels"]), int(data_cfg["image_size"]))(img)
        except (OSError, UnidentifiedImageError) as err:
            raise DataError(f"cannot read the image {path}: {err}") from err
        if num_classes > 0 and y is None:
            raise ConfigError(
                f"{path} has no label and the model is class-conditional; pass its class as y="
            )
        items.append((image, -1))
    if y is not None:
        if num_classes == 0:
            raise ConfigError(f"y={y}: this model is not class-conditional; leave y= out")
        label = class_index(y, num_classes)
        if label is None:
            raise ConfigError(f"y must be one class in 0..{num_classes - 1} here, got {y!r}")
        items = [(image, label) for image, _ in items]
    return collate(items)


def direction_path(ckpt: Path, attribute: str) -> Path:
    """Where a checkpoint's attribute direction is saved: beside it, in `directions/`."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in attribute)
    return ckpt.parent / "directions" / f"{ckpt.stem}_{safe}.pt"


def source_dataset(data_cfg: dict[str, Any]) -> Dataset:
    """The checkpoint's training data (the whole training partition) for directions."""
    return source(data_cfg["name"]).build(data_cfg, "train")
