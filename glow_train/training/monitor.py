"""What a run shows while it trains: the progress bar, TensorBoard, log lines (rank 0)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

__all__ = ["Monitor"]


class Monitor:
    """Rank 0's progress bar, TensorBoard writer and log lines; silent on other ranks.

    Args:
        main: whether this is rank 0.
        metric: the objective's metric (`bpd`), the name of the TensorBoard scalars.
        label: how the metric is printed (`bpd`, `nats/dim`).
        kind: what an item is (`image` or `vector`): the bar counts images per second
            (`img_s`) or items per second (`items_s`), and TensorBoard's rate is
            `images_per_sec` or `items_per_sec`.
    """

    def __init__(self, main: bool, metric: str, label: str, kind: str = "image"):
        self.main = main
        self.metric = metric
        self.label = label
        images = kind == "image"
        self.rate_key, self.rate_tag = (
            ("img_s", "images_per_sec") if images else ("items_s", "items_per_sec")
        )
        self.writer = None
        self.bar: tqdm | None = None

    def open(self, run_dir: Path, total: int | None, initial: int, progress: bool) -> None:
        """Start TensorBoard (`run_dir/tb`) and the progress bar."""
        if self.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"))
        self.bar = tqdm(
            total=total,
            initial=initial,
            disable=not (self.main and progress),
            dynamic_ncols=True,
            unit="step",
            # a log file (cluster job) gets a line every 30 s, not ten a second
            mininterval=0.1 if sys.stderr.isatty() else 30.0,
        )

    def log(self, message: str) -> None:
        """Print one line above the progress bar (the main process alone)."""
        if self.main:
            tqdm.write(message)

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Log a scalar to TensorBoard, if it is on."""
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, image: Any, step: int) -> None:
        """Log an image `(C, H, W)` to TensorBoard, if it is on."""
        if self.writer is not None:
            self.writer.add_image(tag, image, step)

    def histogram(self, tag: str, values: Any, step: int) -> None:
        """Log a histogram of `values` to TensorBoard, if it is on."""
        if self.writer is not None:
            self.writer.add_histogram(tag, values, step)

    def step(self, stats: dict[str, Any], rate: float, skipped_steps: int) -> None:
        """The scalars of the step `stats["step"]` and the bar's figures (a deferred
        step's loss is known one step later: before that, only the rate is shown)."""
        step = stats["step"]
        for key, value in (
            (f"train/{self.metric}", stats["score"]),
            ("lr", stats["lr"]),
            ("grad_norm", stats["grad_norm"]),
            (self.rate_tag, rate),
            ("skipped_steps", skipped_steps),
        ):
            if value is not None:
                self.scalar(key, value, step)
        figures = (
            {}
            if stats["score"] is None
            else {self.label.replace("/", "_"): f"{stats['score']:.3f}"}
        )
        figures["lr"] = f"{stats['lr']:.1e}"
        figures[self.rate_key] = f"{rate:.0f}"
        self.bar.set_postfix(figures, refresh=False, skipped=skipped_steps)

    def advance(self) -> None:
        """Move the progress bar on by one step."""
        self.bar.update(1)

    def close_bar(self) -> None:
        """Close the progress bar, if there is one."""
        if self.bar is not None:
            self.bar.close()

    def close(self) -> None:
        """Close the progress bar and flush and close TensorBoard."""
        self.close_bar()
        if self.writer is not None:
            self.writer.close()
