"""The training loop: steps, evaluation, sample grids, checkpoints, stopping, report.

`TrainingLoop` gets its collaborators in `__init__`: the `train` config, the process
layout, the data (loader, sampler and their sizes), the `Stepper` (the objective and
its optimisation, one step at a time, with the run's counters), the evaluation of a
held-out split, the `CheckpointWriter` and the `Monitor`; it owns what only the loop
needs (the weights of the best evaluation so far). `TrainingLoop.run` returns a
`TrainResult`; what the loop has to say while it runs, the final report included,
goes through the monitor (rank 0 only), never `print`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from glow_train.data.spec import DataSpec
from glow_train.errors import NonFiniteError
from glow_train.io.checkpoint import load_checkpoint, objective_weights
from glow_train.io.outputs import write_atomic
from glow_train.models import FlowModel
from glow_train.runtime.distributed import DistInfo, EpochSampler
from glow_train.sampling.formats import sample_format
from glow_train.sampling.images import sample_images
from glow_train.training.compiling import eager
from glow_train.training.monitor import Monitor
from glow_train.training.report import TrainingDiverged, TrainResult, diverged, final_report
from glow_train.training.saving import CheckpointWriter
from glow_train.training.schedule import CLOCK_EVERY, clock_horizon, reached_limits, total_steps
from glow_train.training.signals import Interrupt, preempt_signal
from glow_train.training.stepper import Stepper

GRID_PADDING = 2  # pixels between the images of the TensorBoard grids and samples.png

__all__ = ["TrainingLoop", "TrainResult", "TrainingDiverged"]


class TrainingLoop:
    """Trains with `run` until a limit, a signal or divergence.

    Args:
        train_cfg: the run's `train` config (limits, periods, early stopping).
        dist: the process layout; rank 0 alone logs, samples and writes.
        run_dir: the run folder.
        seed: the run's seed (of the sample grids).
        spec: the data description (the format of the samples).
        loader: the training data of this process, with its `sampler` (whose epoch is
            set each epoch), `batch_size` and `steps_per_epoch`.
        steps: the objective and its optimisation, and the run's counters.
        evaluate: the evaluation objective's figure on a split (`"val"` or `"test"`).
        checkpoints: writes `best.pt` / `last.pt` when the model is healthy.
        monitor: progress bar, TensorBoard and log lines.
        time_limit: seconds of training (`None`: none).
        selection: the split `best.pt` is chosen on (`"val"`, else `"test"`).
    """

    def __init__(
        self,
        train_cfg: DictConfig,
        dist: DistInfo,
        run_dir: Path,
        *,
        seed: int,
        spec: DataSpec,
        loader: DataLoader,
        sampler: EpochSampler,
        batch_size: int,
        steps_per_epoch: int,
        steps: Stepper,
        evaluate: Callable[[str], float],
        checkpoints: CheckpointWriter,
        monitor: Monitor,
        time_limit: float | None,
        selection: str,
    ):
        self.tcfg, self.dist, self.run_dir, self.seed, self.spec = (
            train_cfg,
            dist,
            run_dir,
            seed,
            spec,
        )
        self.loader, self.sampler = loader, sampler
        self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
        self.steps, self.evaluate, self.checkpoints = steps, evaluate, checkpoints
        self.monitor, self.time_limit, self.selection = monitor, time_limit, selection
        #: the evaluation weights of the best figure so far (early stopping's report)
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.stop_signal: tuple[str | None, bool] = (None, False)  # name, pre-emption or not

    @property
    def model(self) -> FlowModel:
        """The trained model (the objective's flow)."""
        return self.steps.objective.flow

    @property
    def total_steps(self) -> int | None:
        """The steps the run's limits allow (`None`: no step or epoch limit)."""
        return total_steps(self.tcfg, self.steps_per_epoch)

    def save(self, name: str) -> Path | None:
        """Write checkpoint `name` if the model is healthy; its path, else `None`."""
        return self.checkpoints.save(name, self.steps.step)

    def evaluate_and_keep_best(self) -> None:
        """The selection split's figure now (validation, else test); `best.pt` when it is
        the best so far. Test figures never choose anything when there is a validation split."""
        steps, p, split = self.steps, self.steps.progress, self.selection
        steps.settle()
        score = self.evaluate(split)
        if split == "val":
            p.last_val_score = score
        else:
            p.last_test_score = score
        improved = math.isfinite(score) and (p.best_score is None or score < p.best_score)
        if improved:
            p.best_score, p.best_step, p.evals_since_best = score, steps.step, 0
            if self.tcfg.early_stopping is not None:  # kept for the final report
                self.best_weights = {
                    k: v.detach().to("cpu", copy=True)
                    for k, v in steps.eval_objective.state_dict().items()
                }
        else:
            p.evals_since_best += 1
        self.monitor.scalar(f"{split}/{steps.objective.metric}", score, steps.step)
        self.monitor.log(
            f"step {steps.step} epoch {p.epoch}: {split} {steps.objective.metric_label} "
            f"{score:.4f}" + (" (best)" if improved else f" (best {_figure(p.best_score)})")
        )
        if self.dist.is_main and improved:
            self.save("best.pt")

    def write_samples(self, final: bool = False) -> Path | None:
        """Samples to TensorBoard (and `samples.png`, or `samples.csv` for vector data,
        when `final`); a model whose samples are not finite is reported in the log,
        not drawn."""
        n = int(self.tcfg.num_samples)
        if getattr(self.model, "context_dims", 0):  # p(window | context): no free samples
            return None
        try:
            with eager():  # compiled regions: no second compilation for sampling
                samples = {
                    float(t): sample_images(self.steps.eval_objective, n, float(t), self.seed)
                    for t in self.tcfg.sample_temperatures
                }
        except NonFiniteError as err:
            self.monitor.log(f"step {self.steps.step}: no samples: {err}")
            return None
        finally:
            self.steps.objective.train()
        classes = self.model.num_classes  # conditional: the classes in turn, a column each
        writer = sample_format(self.spec, padding=GRID_PADDING, nrow=classes or None)
        writer.tensorboard(self.monitor, samples, self.steps.step)
        if not final:
            return None
        out = self.run_dir / f"samples{writer.suffix}"
        chosen = samples[0.7 if 0.7 in samples else next(iter(samples))]
        return write_atomic(out, lambda tmp: writer.write(tmp, chosen))

    def periodic(self, end_of_epoch: bool) -> None:
        """Evaluation, sample grids and `last.pt` when their step (or epoch) comes."""
        tcfg, main, step = self.tcfg, self.dist.is_main, self.steps.step
        eval_now = tcfg.eval_every_steps is not None and step % int(tcfg.eval_every_steps) == 0
        every_epochs = tcfg.eval_every_epochs
        if end_of_epoch and every_epochs is not None:
            eval_now = eval_now or self.steps.progress.epoch % every_epochs == 0
        sample_now = tcfg.sample_every is not None and step % int(tcfg.sample_every) == 0
        save_now = bool(tcfg.ckpt_every) and step % int(tcfg.ckpt_every) == 0
        if eval_now or save_now:
            self.steps.settle()  # on every rank: the schedule advances alike everywhere
        if eval_now:
            self.evaluate_and_keep_best()
        if main and sample_now:
            self.write_samples()
        if main and save_now:  # from a host copy, written while the next steps run
            self.checkpoints.save("last.pt", step, background=True)

    def stopped_early(self) -> bool:
        """Whether `train.early_stopping` evaluations in a row brought no better figure on
        the selection split (every rank sees the same all-reduced figures)."""
        patience = self.tcfg.early_stopping
        return patience is not None and self.steps.progress.evals_since_best >= int(patience)

    def should_stop(self) -> bool:
        """A signal or time limit on any rank, a step/epoch limit, or early stopping."""
        seen, p = self.steps.stop_seen, self.steps.progress
        return (
            seen["signalled"]
            or seen["time_up"]
            or reached_limits(self.tcfg, p.step, p.epoch)
            or self.stopped_early()
        )

    def run(self) -> TrainResult:
        """Train until a limit, a signal or divergence; always end with a checkpoint."""
        tcfg, steps, p, monitor = self.tcfg, self.steps, self.steps.progress, self.monitor
        monitor.open(self.run_dir, self.total_steps, steps.step, bool(tcfg.progress))
        started, first_step = time.monotonic(), p.step
        follow_clock = self.time_limit is not None and bool(tcfg.cosine_decay)
        stop = reached_limits(tcfg, p.step, p.epoch)
        preempt = preempt_signal(tcfg.preempt_signal)
        with Interrupt(verbose=self.dist.is_main, preempt=preempt) as interrupt:
            while not stop:
                self.sampler.set_epoch(p.epoch, p.batch_in_epoch * self.batch_size)
                tick, seen, batches = time.monotonic(), 0, 0
                for batch in self.loader:
                    batches += 1
                    time_up = (
                        self.time_limit is not None
                        and time.monotonic() - started >= self.time_limit
                    )
                    x, noise, y = steps.prepare_batch(batch, steps.step)
                    stats = steps.train_step(x, noise, y, interrupt.requested, time_up)
                    p.batch_in_epoch += 1
                    seen += len(batch) * self.dist.world_size
                    if follow_clock and steps.step % CLOCK_EVERY == 0:
                        elapsed = time.monotonic() - started
                        steps.set_horizon(
                            clock_horizon(
                                steps.step,
                                steps.step - first_step,
                                elapsed,
                                self.time_limit - elapsed,
                                self.total_steps,
                            )
                        )
                    if p.bad_in_a_row >= int(tcfg.max_bad_steps):
                        raise diverged(self.tcfg, p, self.checkpoints.last_good_text())
                    if steps.step % int(tcfg.log_every) == 0 or steps.step == 1:
                        rate = seen / max(time.monotonic() - tick, 1e-9)
                        tick, seen = time.monotonic(), 0
                        monitor.step(stats, rate, p.skipped_steps)
                    monitor.advance()
                    end_of_epoch = p.batch_in_epoch >= self.steps_per_epoch
                    if end_of_epoch:
                        p.epoch, p.batch_in_epoch = p.epoch + 1, 0
                    stop = self.should_stop()
                    if not stop:
                        self.periodic(end_of_epoch)
                        stop = self.should_stop()  # periodic work may have settled a step
                    if stop or end_of_epoch:
                        break
                if batches == 0:  # nothing left of this epoch (e.g. resumed at its very end)
                    p.epoch, p.batch_in_epoch = p.epoch + 1, 0
            steps.settle()  # every rank: the last step counts before anything is written
            interrupted = steps.stop_seen["signalled"]
            if p.bad_in_a_row >= int(tcfg.max_bad_steps):
                raise diverged(self.tcfg, p, self.checkpoints.last_good_text())
            monitor.close_bar()
            # Still under the signal handlers: a second SIGTERM cannot cut the save short (a
            # second Ctrl-C still aborts at once). A signal means stop now: a scheduler's grace
            # period is short, so no final evaluation or samples; the next run (ckpt=...) or
            # glow-eval gives the figures.
            if interrupted:
                if self.dist.is_main:
                    saved = self.save("last.pt")
                    what = (
                        f"{saved} saved" if saved is not None else self.checkpoints.last_good_text()
                    )
                    monitor.log(
                        f"stopped by {interrupt.received or 'a signal'} at step {steps.step}: "
                        f"{what}; continue with glow-train ckpt={self.run_dir / 'last.pt'}"
                    )
                    monitor.close()
                self.stop_signal = interrupt.received, interrupt.preempted is not None
                interrupt.hand_on()  # after the save: the pre-emption signal goes on to submitit
                return self.result(interrupted=True)
            return self.finish(interrupted)

    def finish(self, interrupted: bool) -> TrainResult:
        """The last selection figure (and `best.pt`), then the test figure of the final
        model, `last.pt` and the samples; the report (the run's last log lines, rank 0)
        names the split of each figure."""
        main, steps, p = self.dist.is_main, self.steps, self.steps.progress
        metric, label = steps.objective.metric, steps.objective.metric_label
        early = self.stopped_early()
        if not early:  # an early stop has just evaluated this very model
            self.evaluate_and_keep_best()
        if self.selection == "val":
            p.last_test_score = self.evaluate("test")
            self.monitor.scalar(f"test/{metric}", p.last_test_score, steps.step)
        reports_best = self.tcfg.early_stopping is not None and self.selection == "val"
        if not math.isfinite(p.last_test_score) and not (reports_best and p.best_score is not None):
            self.monitor.close()
            raise TrainingDiverged(
                f"the model's test {label} at step {steps.step} is not finite: the run "
                f"diverged; {self.checkpoints.last_good_text()}"
            )
        p.finished = True  # last.pt now records a run with its final figures
        if main:
            self.save("last.pt")
        best_test = self.test_of_best(self.run_dir / "best.pt") if reports_best else None
        if main:  # rank 0 alone speaks
            samples = self.write_samples(final=True)  # from best.pt's weights if reported
            self.monitor.close()
            conditional = self.model.num_classes > 0
            for line in final_report(
                self.run_dir, p, label, self.selection, best_test, early, conditional, samples
            ):
                self.monitor.log(line)
        return self.result(interrupted, best_test, early)

    def test_of_best(self, best: Path) -> float | None:
        """The test figure of the weights chosen on validation, loaded into the evaluation
        model (the EMA's when there is one), which then stays at them; `None` without a
        finite validation figure. The weights come from memory, or `best` after a resume."""
        if self.steps.progress.best_score is None:
            return None
        weights = self.best_weights
        if weights is None:
            weights = objective_weights(load_checkpoint(best), ema=self.steps.optim.ema is not None)
        self.steps.eval_objective.load_state_dict(weights)
        score = self.evaluate("test")
        self.monitor.scalar(f"test_best/{self.steps.objective.metric}", score, self.steps.step)
        return score

    def result(
        self, interrupted: bool, best_test: float | None = None, early: bool = False
    ) -> TrainResult:
        """The `TrainResult` of the run as it stands."""
        p, best = self.steps.progress, self.run_dir / "best.pt"
        return TrainResult(
            run_dir=self.run_dir,
            step=p.step,
            metric=self.steps.objective.metric,
            best_score=p.best_score,
            last_test_score=p.last_test_score,
            best_ckpt=best if best.exists() else None,
            last_ckpt=self.run_dir / "last.pt",
            skipped_steps=p.skipped_steps,
            interrupted=interrupted,
            model=self.model,
            selection=self.selection,
            last_val_score=p.last_val_score,
            best_step=p.best_step,
            best_test_score=best_test,
            stopped_early=early,
            stop_signal=self.stop_signal[0],
            preempted=self.stop_signal[1],
        )


def _figure(score: float | None) -> str:
    return "none finite yet" if score is None else f"{score:.4f}"
