r"""Scoring: one function, `evaluate_objective`, behind every figure.

The trainer's validation and test figures, `glow-eval`'s and the
out-of-distribution scores ([`ood`][glow_train.evaluation.ood]) all come from it, so they
cannot drift apart.

The split is cut into fixed batches `[0, b), [b, 2b), …`; batch `i` of draw
`d` is dequantised with noise from a generator seeded by `(seed, d, i)`.
Because the batches and their noise do not depend on the number of processes, a
sharded evaluation (batches dealt round-robin to ranks, results summed) gives the
same number as a single-process one.

A class-conditional model scores $p(x \mid y)$; given a class prior
$p(y)$ it also scores the marginal

$$
p(x) = \sum_y p(y)\, p(x \mid y)
$$

with one pass of the flow and one evaluation of the top prior per class
(`glow_train.likelihood.objective.Objective.class_nlls`), the log-sum-exp in float64
(`glow_train.likelihood.objective.marginal_nll`). The class prior is uniform or the
training split's class frequencies (`class_prior`).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from glow_train.data import make_loader
from glow_train.data.labels import dataset_labels
from glow_train.errors import DataError
from glow_train.likelihood.objective import Objective, check_class_prior, marginal_nll
from glow_train.runtime.distributed import DistInfo, all_reduce_sum, shard_batches

__all__ = [
    "EvalResult",
    "evaluate_objective",
    "batch_seed",
    "class_prior",
    "write_per_item_csv",
]


@dataclass
class EvalResult:
    r"""The score of a split: the mean over the items, its standard error over draws,
    and each item's score.

    Scored with a class prior, the figure is of the marginal $p(x)$ and
    `conditional` holds that of $p(x \mid y)$ from the same pass.

    Attributes:
        value: the mean score over the items, in the unit `metric`.
        stderr: its standard error over the noise draws (`None` for one draw).
        metric: `bpd` (bits per dimension) or `nats_per_dim`.
        num_items: the number of items scored.
        draws: the number of noise draws averaged.
        per_item: each item's score, averaged over draws, `(num_items,)`.
        labels: each item's label, `(num_items,)`.
        conditional: the score of $p(x \mid y)$ beside a marginal one (`None` without a
            class prior, or when the items have no labels).
    """

    value: float
    stderr: float | None
    metric: str
    num_items: int
    draws: int
    per_item: Tensor
    labels: Tensor
    conditional: EvalResult | None = None

    @property
    def item_stderr(self) -> float | None:
        r"""The standard error of `value` over the items: the standard deviation of the
        items' scores over $\sqrt{n}$ (`None` for fewer than 2 items). Two models scored
        on the same items differ by more than chance when the gap exceeds about twice
        this (the standard error of the paired differences is usually smaller)."""
        n = len(self.per_item)
        if n < 2:
            return None
        return (self.per_item.double().std(unbiased=True) / math.sqrt(n)).item()


def batch_seed(seed: int, draw: int, batch_index: int) -> int:
    """The seed of batch `batch_index` of draw `draw`: the same on any number of processes."""
    return (seed * 1_000_003 + draw * 104_729 + batch_index * 31 + 7) % (2**63 - 1)


def class_prior(kind: str, num_classes: int, train_set: Dataset | None = None) -> Tensor:
    """$p(y)$ `(num_classes,)` float64: `"uniform"`, or `"train"`: the class
    frequencies of `train_set` (the training split the model was fitted on).

    Raises:
        ConfigError: an unknown `kind`.
        DataError: a training split without labels.
    """
    check_class_prior(kind)
    if kind == "uniform":
        return torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)
    labels = dataset_labels(train_set)
    labels = labels[(labels >= 0) & (labels < num_classes)]
    if len(labels) == 0:
        raise DataError("class_prior=train: the training split has no labels; use uniform")
    counts = torch.bincount(labels, minlength=num_classes).double()
    return counts / counts.sum()


def _summary(per_draw: Tensor, labels: Tensor, metric: str) -> EvalResult:
    """The mean over items and draws, and the standard error over draws."""
    draws, n = per_draw.shape
    draw_means = per_draw.mean(dim=1)
    stderr = None
    if draws > 1:
        stderr = (draw_means.std(unbiased=True) / math.sqrt(draws)).item()
    return EvalResult(
        value=draw_means.mean().item(),
        stderr=stderr,
        metric=metric,
        num_items=n,
        draws=draws,
        per_item=per_draw.mean(dim=0).cpu(),
        labels=labels.cpu(),
    )


@torch.no_grad()
def evaluate_objective(
    objective: Objective,
    dataset: Dataset,
    *,
    batch_size: int,
    device: torch.device | str,
    seed: int,
    draws: int = 1,
    dist: DistInfo | None = None,
    num_workers: int | str = 0,
    progress: bool = False,
    class_prior: Tensor | None = None,
) -> EvalResult:
    r"""The objective's score on every item of `dataset` (`(item, label)` pairs).

    Args:
        objective: the (unwrapped) objective; it is put in eval mode.
        batch_size: items per batch (`dataset.eval_batch_size`); part of the noise
            schedule.
        device: where to compute.
        seed: dequantisation seed (`train.eval_seed`); the same seed gives the same number.
        draws: noise draws per item; the standard error of the mean over draws is
            reported when `draws > 1`.
        dist: shard the batches over the ranks of a process group and sum the results.
        class_prior: for a class-conditional model, $p(y)$ `(num_classes,)`:
            score the marginal $p(x)$ (labels are then not needed) and, for
            labelled items, $p(x \mid y)$ beside it (`EvalResult.conditional`).
    """
    device = torch.device(device)
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    n = len(dataset)
    batches = shard_batches(n, batch_size, rank, world)
    first_batch = rank
    loader = make_loader(
        dataset, batch_size, batch_sampler=batches, num_workers=num_workers, device=device.type
    )
    objective.eval()
    marginal = class_prior is not None
    if marginal:
        objective.flow.require_classes()
        log_prior = class_prior.double().log().to(device)
        given = torch.zeros(draws, n, dtype=torch.float64, device=device)
        unlabelled = torch.zeros(1, dtype=torch.float64, device=device)
    per_draw = torch.zeros(draws, n, dtype=torch.float64, device=device)
    labels = torch.zeros(n, dtype=torch.int64, device=device)
    bar = tqdm(total=len(batches) * draws, disable=not progress, unit="batch", desc="eval")
    for j, batch in enumerate(loader):
        index = torch.tensor(batches[j], device=device)
        batch = batch.to(device, non_blocking=True)
        labels[index] = batch.y
        x = objective.prepare(batch.x)
        if marginal:
            labelled = bool((batch.y >= 0).all())
            unlabelled += float(not labelled)
            y = batch.y.long()[:, None] if labelled else None
        else:
            y = objective.labels(batch)
        batch_index = first_batch + j * world
        for d in range(draws):
            gen = torch.Generator(device).manual_seed(batch_seed(seed, d, batch_index))
            noise = objective.noise(x, gen)
            if marginal:  # -log p(x), and -log p(x|y) from the same pass
                nlls = objective.class_nlls(x, noise)
                per_draw[d, index] = objective.score(marginal_nll(nlls, log_prior))
                if y is not None:
                    given[d, index] = objective.score(nlls.gather(1, y).squeeze(1)).double()
            else:
                nll = objective(x, noise, y)  # in fp32: the same number every run
                per_draw[d, index] = objective.score(nll).double()
            bar.update(1)
    bar.close()
    all_reduce_sum(per_draw)
    all_reduce_sum(labels)
    result = _summary(per_draw, labels, objective.metric)
    if marginal:
        all_reduce_sum(given)
        all_reduce_sum(unlabelled)
        if float(unlabelled) == 0:
            result.conditional = _summary(given, labels, objective.metric)
    return result


def write_per_item_csv(path: Path, result: EvalResult) -> None:
    r"""`index,label,<metric>` per item (label empty when unknown); with a marginal
    result that has a conditional one, `<metric>` is $p(x \mid y)$'s and
    `<metric>_marginal` $p(x)$'s."""
    columns = [result.per_item.tolist()]
    names = [result.metric]
    if result.conditional is not None:
        columns = [result.conditional.per_item.tolist(), result.per_item.tolist()]
        names = [result.metric, f"{result.metric}_marginal"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", *names])
        for i, (label, *values) in enumerate(zip(result.labels.tolist(), *columns, strict=True)):
            writer.writerow([i, label if label >= 0 else "", *(repr(v) for v in values)])
