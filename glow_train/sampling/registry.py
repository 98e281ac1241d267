"""`glow-sample mode=...`: the registry of sampling modes, and the latent-space ones.

Every mode is a function of the checkpoint and `glow-sample`'s options made a mode
by `glow_train.modes.command_mode`, which declares the options it uses, and
registered in `MODES` under its `mode=` name; `run_mode` runs it with `glow-sample`'s
config and refuses the options it does not use. From Python each is called with
keyword options (`interpolate_strip(ckpt, 0, 7, steps=8)`); an option left out takes
its value in `configs/sample.yaml`.

- `sample`: grids of samples (`glow_train.sampling.images.sample`);
- `forecast`: paths of a series model with a context
  (`glow_train.series.registry.forecast_paths`);
- `interpolate`, `direction`, `manipulate`: the latent-space modes below; the
  mathematics is in `glow_train.sampling.latents`. They write strips (PNG, one row)
  and direction files (`torch.save` of a dict, beside the checkpoint).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from glow_train.config import SampleConfig
from glow_train.errors import CheckpointError, ConfigError
from glow_train.io.outputs import claim_outputs, strip_target, write_atomic
from glow_train.likelihood.loading import Loaded, load, resolve_checkpoint
from glow_train.modes import Mode, Written, command_mode, run_registered
from glow_train.sampling.formats import image_format, writable_extensions
from glow_train.sampling.images import sample
from glow_train.sampling.latents import (
    attribute_direction,
    decode,
    direction_path,
    encode,
    interpolate,
    load_inputs,
    source_dataset,
)
from glow_train.series.registry import forecast_paths

__all__ = [
    "MODES",
    "Written",
    "run_mode",
    "forecast_paths",
    "interpolate_strip",
    "save_direction",
    "manipulate_strip",
]


def run_mode(
    mode: str, ckpt: str | os.PathLike, options: Any = None, typed: Iterable[str] = ()
) -> Written:
    """Run `MODES[mode]` on `ckpt` with `options` (`glow-sample`'s config, a
    `SampleConfig` or a mapping of some of its keys); an option in `typed` (set on the
    command line) that the mode does not use is refused
    (`glow_train.modes.run_registered`)."""
    unknown = f"mode must be one of {', '.join(MODES)}, got {mode!r}"
    return run_registered(MODES, mode, ckpt, options, unknown, typed)


def _load(ckpt: str | os.PathLike, opts: SampleConfig) -> tuple[Loaded, dict[str, Any]]:
    """The checkpoint (as `opts` say: device, EMA, precision) and its dataset config."""
    loaded = load(ckpt, ema=opts.ema, device=opts.device, precision=opts.precision)
    if loaded.info["data"]["kind"] != "image":
        raise ConfigError("latent-space modes need an image model (model=glow)")
    return loaded, loaded.dataset_config()


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _tag(ref: Any) -> str:
    """An input's name in a file name: `test<index>` or the image file's stem."""
    return _safe(Path(str(ref)).stem if not str(ref).lstrip("-").isdigit() else f"test{ref}")


def _claim_strip(
    ckpt: Path, name: str, out: Any, overwrite: bool, data_cfg: dict, inputs: list[Any]
) -> Path:
    """Where a strip goes (`glow_train.io.outputs.strip_target`), checked against the
    output policy: never the checkpoint, the dataset's files or the input images."""
    images = [(r, f"the input image {r}") for r in inputs if not str(r).lstrip("-").isdigit()]
    target = strip_target(ckpt, name, out, writable_extensions())
    return claim_outputs([target], out, overwrite, ckpt, [data_cfg], images)[0]


def _encode_inputs(
    loaded: Loaded, data_cfg: dict, refs: list[Any], y: Any
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """The latents (one tensor per level) and labels of the input images `refs`
    (test-set indices or image files; `y`: the class of a conditional model's file)."""
    batch = load_inputs(refs, data_cfg, y, loaded.flow.num_classes)
    labels = loaded.objective.labels(batch)
    with loaded.autocast():
        return encode(loaded.objective, batch.x, labels), labels


def _decode_strip(
    loaded: Loaded,
    path: Path,
    latents: list[torch.Tensor],
    labels: torch.Tensor | None,
    padding: int,
) -> Written:
    """Decode `latents` (one image each) and write them as one row to `path`."""
    from torchvision.utils import make_grid, save_image  # about a second to load: on use

    with loaded.autocast():
        images = decode(loaded.objective, latents, labels)
    grid = make_grid(images, nrow=len(images), padding=padding)
    kind = image_format(path)
    return Written([write_atomic(path, lambda tmp: save_image(grid, tmp, format=kind))])


@command_mode(
    "sample",
    "mode=interpolate",
    ("a", "b", "steps", "interp", "y", "padding", "out", "overwrite", "device", "ema", "precision"),
    positional=("a", "b"),
)
def interpolate_strip(ckpt: str | os.PathLike, opts: SampleConfig) -> Written:
    """`mode=interpolate`: encode `a` and `b` (test-set indices or image files),
    interpolate every level's latent in `steps` points and write the decoded strip
    (one row).

    Args:
        ckpt: a checkpoint of an image model, or a run folder.
        opts: the options (`glow_train.modes.command_mode`).

    Returns:
        The strip's file.
    """
    a, b, steps, y, out = opts.a, opts.b, opts.steps, opts.y, opts.out
    if a is None or b is None:
        raise ConfigError("mode=interpolate needs a= and b= (test-set indices or image files)")
    loaded, data_cfg = _load(ckpt, opts)
    ckpt = loaded.path
    z, labels = _encode_inputs(loaded, data_cfg, [a, b], y)
    if labels is not None and int(labels[0]) != int(labels[1]):
        raise ConfigError(
            f"a and b are of classes {int(labels[0])} and {int(labels[1])}; a class-conditional "
            "model interpolates within one class (pick two images of one class, or pass y=)"
        )
    name = f"interp_{opts.interp}_{_tag(a)}_{_tag(b)}"
    path = _claim_strip(ckpt, name, out, opts.overwrite, data_cfg, [a, b])
    za, zb = [l[:1] for l in z], [l[1:] for l in z]
    mixed = interpolate(za, zb, steps, opts.interp)
    y_all = None if labels is None else labels[:1].expand(steps)
    return _decode_strip(loaded, path, mixed, y_all, opts.padding)


@command_mode(
    "sample",
    "mode=direction",
    ("attribute", "max_images", "batch_size", "device", "ema", "precision"),
    positional=("attribute",),
)
def save_direction(ckpt: str | os.PathLike, opts: SampleConfig) -> Written:
    """`mode=direction`: compute the attribute's latent direction from the training
    data and save it beside the checkpoint (`glow_train.sampling.latents.direction_path`),
    encoding `batch_size` images at a time (`None`: the dataset's `eval_batch_size`).

    Args:
        ckpt: a checkpoint of an image model, or a run folder.
        opts: the options (`glow_train.modes.command_mode`).

    Returns:
        The direction's file, and a note of how many images it took with and
        without the attribute.
    """
    attribute, max_images = opts.attribute, opts.max_images
    if attribute is None:
        raise ConfigError("mode=direction needs attribute= (a class, or a CelebA attribute)")
    loaded, data_cfg = _load(ckpt, opts)
    objective, ckpt = loaded.objective, loaded.path
    dataset = source_dataset(data_cfg)
    batch_size = opts.batch_size or data_cfg["eval_batch_size"]
    with loaded.autocast():
        found = attribute_direction(objective, dataset, str(attribute), max_images, batch_size)
    found.update(checkpoint=ckpt.name, dataset=data_cfg["name"])
    path = direction_path(ckpt, found["attribute"])
    write_atomic(path, lambda tmp: torch.save(found, tmp))
    note = (
        f"direction of {found['attribute']}: mean latent of {found['count_with']} images "
        f"with it minus {found['count_without']} without"
    )
    return Written([path], [note])


@command_mode(
    "sample",
    "mode=manipulate",
    (
        "attribute",
        "image",
        "alpha",
        "y",
        "padding",
        "out",
        "overwrite",
        "device",
        "ema",
        "precision",
    ),
    positional=("attribute", "image"),
)
def manipulate_strip(ckpt: str | os.PathLike, opts: SampleConfig) -> Written:
    """`mode=manipulate`: encode `image`, add `alpha` times the saved direction of
    `attribute` for each `alpha` and write the decoded strip.

    Args:
        ckpt: a checkpoint of an image model, or a run folder.
        opts: the options (`glow_train.modes.command_mode`).

    Returns:
        The strip's file.
    """
    attribute, image, alphas, y, out = opts.attribute, opts.image, opts.alpha, opts.y, opts.out
    if attribute is None or image is None:
        raise ConfigError("mode=manipulate needs attribute= and image= (test-set index or file)")
    ckpt = resolve_checkpoint(ckpt)
    path_in = direction_path(ckpt, str(attribute))
    if not path_in.is_file():
        raise CheckpointError(
            f"no direction for {attribute} beside {ckpt} ({path_in}); compute it first: "
            f"glow-sample ckpt={ckpt} mode=direction attribute={attribute}"
        )
    direction = torch.load(path_in, weights_only=True)
    loaded, data_cfg = _load(ckpt, opts)
    name = f"manipulate_{_safe(str(attribute))}_{_tag(image)}"
    path = _claim_strip(ckpt, name, out, opts.overwrite, data_cfg, [image])
    z, labels = _encode_inputs(loaded, data_cfg, [image], y)
    if [tuple(d.shape) for d in direction["levels"]] != [tuple(l.shape[1:]) for l in z]:
        raise CheckpointError(f"{path_in} was computed for another model; compute it again")
    _check_alphas(alphas, z, direction["levels"])
    steps = torch.tensor(alphas)
    edited = [
        l + steps.view(-1, *([1] * (l.dim() - 1))).to(l) * d.to(l)
        for l, d in zip(z, direction["levels"], strict=True)
    ]
    y_all = None if labels is None else labels.expand(len(alphas))
    return _decode_strip(loaded, path, edited, y_all, opts.padding)


#: how far `alpha` may move the latent, in lengths of the image's own latent
MAX_EDIT = 10.0


def _check_alphas(alphas: list[float], z: list[torch.Tensor], levels: list[torch.Tensor]) -> None:
    """Refuse an `alpha` that moves the latent more than `MAX_EDIT` times its own
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


#: `mode=` name -> the mode that runs it (`run_mode`)
MODES: dict[str, Mode] = {
    "sample": sample,
    "interpolate": interpolate_strip,
    "direction": save_direction,
    "manipulate": manipulate_strip,
    "forecast": forecast_paths,
}
