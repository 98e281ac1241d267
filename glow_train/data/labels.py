"""The labels of a dataset's items, without decoding the items when it can be helped."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

__all__ = ["dataset_labels"]


def dataset_labels(dataset: Dataset, limit: int | None = None) -> Tensor:
    """The labels `(n,)` int64 of the first `limit` items (all when `None`; `-1`
    where an item has none): from the dataset's label list when it keeps one
    (in-memory images, class folders, torchvision's `targets`, through a subset)
    rather than by decoding every item."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    inner = getattr(dataset, "dataset", None)
    indices = getattr(dataset, "indices", None)
    if isinstance(dataset, Subset) or (inner is not None and indices is not None):
        # a Subset, or the held-out/remaining part of a training split
        return dataset_labels(inner)[torch.as_tensor(list(indices[:n]), dtype=torch.long)]
    for owner in (dataset, getattr(dataset, "source", None)):
        for name in ("labels", "targets"):
            values = getattr(owner, name, None)
            if values is not None and len(values) == len(dataset):
                return torch.as_tensor(values[:n]).long()
    return torch.tensor([int(dataset[i][1]) for i in range(n)], dtype=torch.long)
