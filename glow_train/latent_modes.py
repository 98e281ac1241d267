"""``glow-sample mode=interpolate|direction|manipulate``: checkpoint in, files out.

The mathematics is in :mod:`glow_train.latents`; this module loads the checkpoint
and its data, checks the options and writes the strips (PNG, one row) and the
direction files (``torch.save`` of a dict, beside the checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from glow_train.data import validate_dataset_config
from glow_train.errors import CheckpointError, ConfigError, require_int, require_numbers
from glow_train.latents import (
    attribute_direction,
    decode,
    direction_path,
    encode,
    interpolate,
    load_inputs,
    source_dataset,
)
from glow_train.objective import load_objective
from glow_train.outputs import claim_outputs, strip_target, write_atomic
from glow_train.sample_formats import image_format, writable_extensions

__all__ = ["MODES", "interpolate_strip", "save_direction", "manipulate_strip"]

MODES = ("sample", "interpolate", "direction", "manipulate")


def _load(ckpt: Path, device: torch.device, ema: bool):
    objective, info = load_objective(ckpt, ema=ema, device=device)
    if info["data"]["kind"] != "image":
        raise ConfigError("latent-space modes need an image model (model=glow)")
    return objective, validate_dataset_config(info["config"]["dataset"])


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _tag(ref: Any) -> str:
    """An input's name in a file name: ``test<index>`` or the image file's stem."""
    return _safe(Path(str(ref)).stem if not str(ref).lstrip("-").isdigit() else f"test{ref}")


def _claim_strip(
    ckpt: Path, name: str, out: Any, overwrite: bool, data_cfg: dict, inputs: list[Any]
) -> Path:
    """Where a strip goes (:func:`glow_train.outputs.strip_target`), checked against the
    output policy: never the checkpoint, the dataset's files or the input images."""
    images = [(r, f"the input image {r}") for r in inputs if not str(r).lstrip("-").isdigit()]
    target = strip_target(ckpt, name, out, writable_extensions())
    return claim_outputs([target], out, overwrite, ckpt, [data_cfg], images)[0]


def _write(path: Path, images: torch.Tensor, padding: int) -> Path:
    from torchvision.utils import make_grid, save_image  # about a second to load: on use

    grid = make_grid(images, nrow=len(images), padding=padding)
    kind = image_format(path)
    return write_atomic(path, lambda tmp: save_image(grid, tmp, format=kind))


def interpolate_strip(
    ckpt: Path,
    a: Any,
    b: Any,
    *,
    steps: int,
    interp: str,
    y: Any,
    padding: int,
    out: Any,
    device: torch.device,
    ema: bool,
    overwrite: bool = False,
) -> Path:
    """Encode ``a`` and ``b`` (test-set indices or image files), interpolate every
    level's latent in ``steps`` points and write the decoded strip (one row)."""
    if a is None or b is None:
        raise ConfigError("mode=interpolate needs a= and b= (test-set indices or image files)")
    steps = require_int("steps", steps, 2)
    objective, data_cfg = _load(ckpt, device, ema)
    batch = load_inputs([a, b], data_cfg, y, objective.flow.num_classes)
    labels = objective.labels(batch)
    if labels is not None and int(labels[0]) != int(labels[1]):
        raise ConfigError(
            f"a and b are of classes {int(labels[0])} and {int(labels[1])}; a class-conditional "
            "model interpolates within one class (pick two images of one class, or pass y=)"
        )
    name = f"interp_{interp}_{_tag(a)}_{_tag(b)}"
    path = _claim_strip(ckpt, name, out, overwrite, data_cfg, [a, b])
    z = encode(objective, batch.x, labels)
    za, zb = [l[:1] for l in z], [l[1:] for l in z]
    mixed = interpolate(za, zb, steps, interp)
    y_all = None if labels is None else labels[:1].expand(steps)
    return _write(path, decode(objective, mixed, y_all), padding)


def save_direction(
    ckpt: Path,
    attribute: Any,
    *,
    max_images: int,
    batch_size: int | None,
    device: torch.device,
    ema: bool,
) -> tuple[Path, dict[str, Any]]:
    """Compute the attribute's latent direction from the training data and save it
    beside the checkpoint (:func:`glow_train.latents.direction_path`), encoding
    ``batch_size`` images at a time (``None``: the dataset's ``eval_batch_size``)."""
    if attribute is None:
        raise ConfigError("mode=direction needs attribute= (a class, or a CelebA attribute)")
    max_images = require_int("max_images", max_images, 2)
    objective, data_cfg = _load(ckpt, device, ema)
    dataset = source_dataset(data_cfg)
    batch_size = require_int("batch_size", batch_size or data_cfg["eval_batch_size"], 1)
    found = attribute_direction(objective, dataset, str(attribute), max_images, batch_size)
    found.update(checkpoint=ckpt.name, dataset=data_cfg["name"])
    path = direction_path(ckpt, found["attribute"])
    write_atomic(path, lambda tmp: torch.save(found, tmp))
    return path, found


def manipulate_strip(
    ckpt: Path,
    attribute: Any,
    image: Any,
    *,
    alpha: Any,
    y: Any,
    padding: int,
    out: Any,
    device: torch.device,
    ema: bool,
    overwrite: bool = False,
) -> Path:
    """Encode ``image``, add ``alpha`` times the saved direction of ``attribute`` for
    each ``alpha`` and write the decoded strip."""
    if attribute is None or image is None:
        raise ConfigError("mode=manipulate needs attribute= and image= (test-set index or file)")
    alphas = require_numbers("alpha", alpha, "[-1,0,1]")
    path_in = direction_path(ckpt, str(attribute))
    if not path_in.is_file():
        raise CheckpointError(
            f"no direction for {attribute} beside {ckpt} ({path_in}); compute it first: "
            f"glow-sample ckpt={ckpt} mode=direction attribute={attribute}"
        )
    direction = torch.load(path_in, weights_only=True)
    objective, data_cfg = _load(ckpt, device, ema)
    name = f"manipulate_{_safe(str(attribute))}_{_tag(image)}"
    path = _claim_strip(ckpt, name, out, overwrite, data_cfg, [image])
    batch = load_inputs([image], data_cfg, y, objective.flow.num_classes)
    labels = objective.labels(batch)
    z = encode(objective, batch.x, labels)
    if [tuple(d.shape) for d in direction["levels"]] != [tuple(l.shape[1:]) for l in z]:
        raise CheckpointError(f"{path_in} was computed for another model; compute it again")
    _check_alphas(alphas, z, direction["levels"])
    steps = torch.tensor(alphas)
    edited = [
        l + steps.view(-1, *([1] * (l.dim() - 1))).to(l) * d.to(l)
        for l, d in zip(z, direction["levels"], strict=True)
    ]
    y_all = None if labels is None else labels.expand(len(alphas))
    return _write(path, decode(objective, edited, y_all), padding)


#: how far ``alpha`` may move the latent, in lengths of the image's own latent
MAX_EDIT = 10.0


def _check_alphas(alphas: list[float], z: list[torch.Tensor], levels: list[torch.Tensor]) -> None:
    """Refuse an ``alpha`` that moves the latent more than :data:`MAX_EDIT` times its own
    length: the decoded image no longer depends on the input and saturates."""
    length = float(torch.sqrt(sum((l.double() ** 2).sum() for l in z)))
    step = float(torch.sqrt(sum((d.double() ** 2).sum() for d in levels)))
    if step == 0:
        return
    limit = MAX_EDIT * length / step
    worst = max(alphas, key=abs)
    if abs(worst) > limit:
        raise ConfigError(
            f"alpha={worst:g} moves the image's latent {abs(worst) * step / length:.3g} times "
            f"its own length along the direction; the strip would be saturated: keep every "
            f"alpha within +-{limit:.3g} (e.g. alpha=[-1,-0.5,0,0.5,1])"
        )
