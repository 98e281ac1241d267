r"""Out-of-distribution scores: `glow-eval ckpt=... ood=<dataset or folder>`.

Both sets, the checkpoint's test split (in-distribution, the negatives) and the
other data (out-of-distribution, the positives), are scored per image in
bits/dim by `glow_train.evaluation.scoring.evaluate_objective`, the function behind
`glow-eval`'s figures; then the area under the ROC curve of telling them apart by

- **bits/dim**: a higher figure means less likely, hence "out";
- **typicality**: $|\mathrm{bpd}(x) - \overline{\mathrm{bpd}}_{train}|$, the
  distance from the training images' mean figure (a per-image form of the
  typicality test of Nalisnick et al. 2019): high-dimensional data of a model
  lies in a thin shell of typical likelihoods, and a likelihood *above* the shell
  is as suspicious as one below it.

A likelihood model can give higher likelihood to simpler out-of-distribution
data than to its own test set (Nalisnick et al. 2019, "Do deep generative models
know what they don't know?"): an AUROC below 0.5 by bits/dim is that effect,
not a bug, and the typicality score is the usual remedy.

A class-conditional model is scored by its marginal
$p(x) = \sum_y p(y)\,p(x \mid y)$ (the other images have no labels), with
$p(y)$ uniform or the training split's class frequencies (`class_prior`).

`auroc` is the Mann-Whitney statistic with tied scores counted one half,
equal to scikit-learn's `roc_auc_score` (tested).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Subset

from glow_train.config import EvalConfig
from glow_train.data import (
    build_dataset,
    dataset_config,
    dataset_names,
    describe_dataset,
    source,
)
from glow_train.errors import ConfigError, NonFiniteError
from glow_train.evaluation.figures import USES as PLAIN_USES
from glow_train.evaluation.figures import dataset_choice, eval_dataset, model_class_prior
from glow_train.evaluation.scoring import EvalResult, evaluate_objective, write_per_item_csv
from glow_train.io.outputs import claim_outputs, ood_targets, write_atomic
from glow_train.likelihood.loading import load_to_score
from glow_train.modes import command_mode

__all__ = ["auroc", "ood_dataset", "evaluate_ood"]


def auroc(negatives: Tensor, positives: Tensor) -> float:
    """Area under the ROC curve of scores where `positives` should score higher:
    the probability that a random positive outscores a random negative (ties 1/2)."""
    neg, pos = negatives.double().flatten(), positives.double().flatten()
    if len(neg) == 0 or len(pos) == 0:
        raise ValueError("AUROC needs at least one score of each kind")
    scores = torch.cat([neg, pos])
    order = torch.argsort(scores, stable=True)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # tied scores share the mean of their ranks
    unique, inverse = torch.unique(scores, return_inverse=True)
    sums = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(unique), dtype=torch.float64).index_add_(
        0, inverse, torch.ones_like(ranks)
    )
    ranks = (sums / counts)[inverse]
    u = ranks[len(neg) :].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def ood_dataset(ood: str, model_cfg: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The dataset config and split of `ood`: a folder (every image in it) or a
    dataset name (its test split), at the model's image size, channels and bit depth."""
    shape = {k: model_cfg[k] for k in ("image_size", "channels", "n_bits") if k in model_cfg}
    shape["eval_batch_size"] = model_cfg.get("eval_batch_size", 128)
    path = Path(os.path.expanduser(str(ood)))
    if path.is_dir():
        _check_image_folder(ood, path)
        settings = dict(root=str(path), test_fraction=0.0, val_size=0, num_workers=0, **shape)
        return dataset_config("folder", **settings), "train"
    images = [n for n in dataset_names() if source(n).kind == "image" and n != "folder"]
    if str(ood) not in images:
        raise ConfigError(
            f"ood={ood} is neither a folder of images nor an image dataset ({', '.join(images)})"
        )
    return dataset_config(str(ood), **shape), "test"


def _check_image_folder(ood: str, path: Path) -> None:
    """Refuse, naming `ood=`, a folder without a readable image (the folder source's
    own messages would name `dataset.root`, which the user did not type)."""
    from glow_train.data.folder import IMAGE_EXTENSIONS, readable

    kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
    files = [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    if not files:
        raise ConfigError(
            f"ood={ood} holds no image files ({kinds}); point ood= at a folder of images"
        )
    if not any(readable(p) for p in files):
        raise ConfigError(
            f"ood={ood}: none of its {len(files)} image file(s) can be read as an image; "
            "point ood= at a folder of images"
        )


#: the options of `glow-eval` that `ood=` uses: a plain evaluation's, but for the bit
#: depth (the model's) and `per_image` (both tables are always written)
USES = ("ood", "ood_train_images", *(u for u in PLAIN_USES if u not in ("n_bits", "per_image")))


@command_mode("eval", "ood=", USES, positional=("ood",))
def evaluate_ood(ckpt: str | os.PathLike, opts: EvalConfig) -> dict[str, Any]:
    """Score the checkpoint's `split` and the other images `ood` per image; write
    `eval.json`, `per_image.csv` and `ood_per_image.csv`.

    Called as `evaluate_ood(ckpt, ood, **options)` or `evaluate_ood(ckpt, options=opts)`
    with an `EvalConfig`, as `glow_train.evaluation.figures.evaluate` is: an option
    left out takes its value in `configs/eval.yaml`. `ood_train_images` is how many of
    the first training images give the typicality centre; `dataset` may only replace
    keys of the checkpoint's dataset config (e.g. its `root` when the data moved);
    `n_bits` and `per_image` are refused (the images are scored at the model's bit
    depth, and both per-image tables are always written).

    Args:
        ckpt: a checkpoint of an image model, or a run folder.
        opts: the options, built by the call as above.

    Returns:
        The summary written to `eval.json`, with `json_path` added.

    Raises:
        ConfigError: a bad option, `ood` neither a folder of images nor an image
            dataset, or images of another shape than the model's.
        NonFiniteError: a figure is not finite (nothing is written).
    """
    ood, split = opts.ood, opts.split
    whole, dataset_overrides = dataset_choice(opts.dataset)
    if ood is None:
        raise ConfigError("ood= names no images: a folder of images or an image dataset")
    if whole is not None:
        raise ConfigError(
            "ood= scores the checkpoint's own data against the other images: "
            "dataset=<name> does not apply (dataset.<key>= does)"
        )
    scoring = load_to_score(ckpt, opts)
    loaded, saved, draws = scoring.loaded, scoring.dataset, scoring.draws
    objective, info, ckpt, device = loaded.objective, loaded.info, loaded.path, loaded.device
    if objective.dequantizer.n_bits is None:
        raise ConfigError("ood= scores images; this checkpoint models vectors")
    data_cfg = eval_dataset(saved, None, dataset_overrides)
    num_classes = objective.flow.num_classes
    p_y = None  # a class-conditional model: its marginal p(x)
    if num_classes > 0:
        p_y = model_class_prior(opts.class_prior, num_classes, data_cfg)
    ood_cfg, ood_split = ood_dataset(ood, data_cfg)
    ood_shape = describe_dataset(ood_cfg).shape
    if ood_shape != tuple(info["data"]["shape"]):
        raise ConfigError(
            f"ood={ood} yields images of shape {ood_shape}, the model takes "
            f"{tuple(info['data']['shape'])}; use a folder of images (resized to fit)"
        )
    name = Path(ood_cfg["root"]).name if ood_cfg["name"] == "folder" else str(ood)
    json_target, csv_targets = ood_targets(ckpt, name, opts.out)
    json_path, in_csv, ood_csv = claim_outputs(
        [json_target, *csv_targets], opts.out, opts.overwrite, ckpt, [saved, data_cfg, ood_cfg]
    )
    settings = dict(
        batch_size=scoring.eval_batch_size(data_cfg),
        device=device,
        seed=scoring.seed,
        draws=draws,
        progress=opts.progress,
        class_prior=p_y,
    )
    train = build_dataset(data_cfg, "train")
    with loaded.autocast():
        results: dict[str, EvalResult] = {
            "in": evaluate_objective(objective, build_dataset(data_cfg, split), **settings),
            "ood": evaluate_objective(objective, build_dataset(ood_cfg, ood_split), **settings),
            "train": evaluate_objective(
                objective,
                Subset(train, range(min(opts.ood_train_images, len(train)))),
                **settings,
            ),
        }
    # the marginal's figures alone (p(x|y) is not what the AUROC compares)
    results = {name: replace(result, conditional=None) for name, result in results.items()}
    for name, result in results.items():
        if not math.isfinite(result.value):
            raise NonFiniteError(f"non-finite bits/dim on the {name} images: a diverged model?")
    centre = results["train"].value
    inside, outside = results["in"].per_item, results["ood"].per_item
    summary = {
        "checkpoint": str(ckpt.resolve()),
        "in_distribution": {"dataset": data_cfg["name"], "split": split},
        "out_of_distribution": {"dataset": ood_cfg["name"], "source": str(ood), "split": ood_split},
        "bpd_in": results["in"].value,
        "bpd_ood": results["ood"].value,
        "num_in": results["in"].num_items,
        "num_ood": results["ood"].num_items,
        "train_bpd_mean": centre,
        "train_images": results["train"].num_items,
        "auroc_bpd": auroc(inside, outside),
        "auroc_typicality": auroc((inside - centre).abs(), (outside - centre).abs()),
        "seed": settings["seed"],
        "draws": draws,
        "precision": loaded.precision.name,
        **(
            {"density": "marginal p(x)", "class_prior": opts.class_prior} if p_y is not None else {}
        ),
    }
    write_atomic(in_csv, lambda tmp: write_per_item_csv(tmp, results["in"]))
    write_atomic(ood_csv, lambda tmp: write_per_item_csv(tmp, results["ood"]))
    text = json.dumps(summary, indent=2) + "\n"
    summary["json_path"] = str(write_atomic(json_path, lambda tmp: tmp.write_text(text)))
    return summary
