"""The training loop over a :class:`~glow_train.training.Trainer`: steps, periodic
evaluation, sample grids and checkpoints, stopping, and the run's report.

The functions take the trainer as a
:class:`~glow_train.training.interface.LoopTrainer`: that protocol
states every member the loop uses (the trainer's data, optimisation, counters and
monitor, and its step, evaluation and checkpoint methods), so the loop depends on
that interface and not on the class (which calls :func:`fit` from
:meth:`~glow_train.training.Trainer.fit`). :func:`write_samples` draws from its
EMA model. The loop returns a :class:`TrainResult`; what it has to say while
it runs, the final report included, goes through the trainer's
:class:`~glow_train.training.monitor.Monitor` (rank 0 only), never ``print``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from glow_train.checkpoint import load_checkpoint, objective_weights
from glow_train.errors import GlowError, NonFiniteError
from glow_train.models import FlowModel
from glow_train.outputs import write_atomic
from glow_train.sampling.formats import sample_format
from glow_train.sampling.images import sample_images
from glow_train.training.interface import LoopTrainer
from glow_train.training.schedule import CLOCK_EVERY, clock_horizon, reached_limits
from glow_train.training.signals import Interrupt, preempt_signal

GRID_PADDING = 2  # pixels between the images of the TensorBoard grids and samples.png

__all__ = ["fit", "TrainResult", "TrainingDiverged"]


class TrainingDiverged(GlowError):
    """Too many consecutive non-finite steps."""


@dataclass
class TrainResult:
    """What a finished run left: its folder, checkpoints, figures and the trained model.

    Scores are in the objective's unit, ``metric`` (``"bpd"`` for images).
    """

    run_dir: Path
    step: int
    metric: str
    best_score: float | None  # on the ``selection`` split
    last_test_score: float | None
    best_ckpt: Path | None
    last_ckpt: Path
    skipped_steps: int
    interrupted: bool
    model: FlowModel  # the raw (unwrapped) model; EMA weights are in the checkpoints
    selection: str = "test"  # the split best_score and best.pt were chosen on
    last_val_score: float | None = None
    best_step: int | None = None  # the step of best.pt
    best_test_score: float | None = None  # early stopping: the test figure of best.pt
    stopped_early: bool = False  # the validation figure stopped improving (train.early_stopping)


def evaluate_and_keep_best(trainer: LoopTrainer) -> None:
    """The selection split's figure now (validation, else test); ``best.pt`` when it is
    the best so far. Test figures never choose anything when there is a validation split."""
    trainer.settle()
    split = trainer.selection
    score = trainer.evaluate(split)
    p, label = trainer.progress, trainer.objective.metric_label
    if split == "val":
        p.last_val_score = score
    else:
        p.last_test_score = score
    improved = math.isfinite(score) and (p.best_score is None or score < p.best_score)
    if improved:
        p.best_score, p.best_step, p.evals_since_best = score, trainer.step, 0
        if trainer.cfg.train.early_stopping is not None:  # kept for the final report
            trainer.best_weights = {
                k: v.detach().to("cpu", copy=True)
                for k, v in trainer.eval_objective.state_dict().items()
            }
    else:
        p.evals_since_best += 1
    trainer.monitor.scalar(f"{split}/{trainer.objective.metric}", score, trainer.step)
    trainer.monitor.log(
        f"step {trainer.step} epoch {p.epoch}: {split} {label} {score:.4f}"
        + (" (best)" if improved else f" (best {_figure(p.best_score)})")
    )
    if trainer.dist.is_main and improved:
        trainer.save("best.pt")


def write_samples(trainer: LoopTrainer, final: bool = False) -> Path | None:
    """Samples to TensorBoard (and ``samples.png``, or ``samples.csv`` for vector data,
    when ``final``); a model whose samples are not finite is reported in the log,
    not drawn."""
    n = int(trainer.cfg.train.num_samples)
    if getattr(trainer.model, "context_dims", 0):  # p(window | context): no free samples
        return None
    try:
        samples = {
            float(t): sample_images(trainer.eval_objective, n, float(t), trainer.seed)
            for t in trainer.cfg.train.sample_temperatures
        }
    except NonFiniteError as err:
        trainer.monitor.log(f"step {trainer.step}: no samples: {err}")
        return None
    finally:
        trainer.objective.train()
    classes = trainer.model.num_classes  # conditional: the classes in turn, a column each
    writer = sample_format(trainer.spec, padding=GRID_PADDING, nrow=classes or None)
    writer.tensorboard(trainer.monitor, samples, trainer.step)
    if not final:
        return None
    out = trainer.run_dir / f"samples{writer.suffix}"
    chosen = samples[0.7 if 0.7 in samples else next(iter(samples))]
    return write_atomic(out, lambda tmp: writer.write(tmp, chosen))


def _figure(score: float | None) -> str:
    return "none finite yet" if score is None else f"{score:.4f}"


def diverged(trainer: LoopTrainer) -> TrainingDiverged:
    tcfg = trainer.cfg.train
    kept = trainer.last_good_text()
    return TrainingDiverged(
        f"{trainer.progress.bad_in_a_row} consecutive steps had a non-finite loss or gradient "
        f"(step {trainer.step}); likely causes: a learning rate too high "
        f"(train.lr={tcfg.lr}), too short a warm-up (train.warmup_steps="
        f"{tcfg.warmup_steps}), or affine coupling (try model.coupling=additive); {kept}"
    )


def periodic(trainer: LoopTrainer, end_of_epoch: bool) -> None:
    """Evaluation, sample grids and ``last.pt`` when their step (or epoch) comes."""
    tcfg, main = trainer.cfg.train, trainer.dist.is_main
    eval_now = tcfg.eval_every_steps is not None and trainer.step % int(tcfg.eval_every_steps) == 0
    every_epochs = tcfg.eval_every_epochs
    if end_of_epoch and every_epochs is not None and trainer.progress.epoch % every_epochs == 0:
        eval_now = True
    sample_now = tcfg.sample_every is not None and trainer.step % int(tcfg.sample_every) == 0
    save_now = bool(tcfg.ckpt_every) and trainer.step % int(tcfg.ckpt_every) == 0
    if eval_now or save_now:
        trainer.settle()  # on every rank: the schedule advances alike everywhere
    if eval_now:
        evaluate_and_keep_best(trainer)
    if main and sample_now:
        write_samples(trainer)
    if main and save_now:
        trainer.save("last.pt")


def stopped_early(trainer: LoopTrainer) -> bool:
    """Whether ``train.early_stopping`` evaluations in a row brought no better figure on
    the selection split (every rank sees the same all-reduced figures)."""
    patience = trainer.cfg.train.early_stopping
    return patience is not None and trainer.progress.evals_since_best >= int(patience)


def _stop(trainer: LoopTrainer) -> bool:
    """A signal or the time limit seen on any rank (agreed flags), a step/epoch limit,
    or early stopping."""
    seen, p = trainer.stop_seen, trainer.progress
    return (
        seen["signalled"]
        or seen["time_up"]
        or reached_limits(trainer.cfg.train, p.step, p.epoch)
        or stopped_early(trainer)
    )


def fit(trainer: LoopTrainer) -> TrainResult:
    """Train until a limit, a signal or divergence; always end with a checkpoint."""
    tcfg, p = trainer.cfg.train, trainer.progress
    trainer.monitor.open(trainer.run_dir, trainer.total_steps, trainer.step, bool(tcfg.progress))
    started, first_step = time.monotonic(), p.step
    follow_clock = trainer.time_limit is not None and bool(tcfg.cosine_decay)
    stop = reached_limits(tcfg, p.step, p.epoch)
    interrupted = False
    preempt = preempt_signal(tcfg.preempt_signal)
    with Interrupt(verbose=trainer.dist.is_main, preempt=preempt) as interrupt:
        while not stop:
            trainer.sampler.set_epoch(p.epoch, p.batch_in_epoch * trainer.batch_size)
            tick, seen, batches = time.monotonic(), 0, 0
            for batch in trainer.loader:
                batches += 1
                time_up = (
                    trainer.time_limit is not None
                    and time.monotonic() - started >= trainer.time_limit
                )
                x, noise, y = trainer.prepare_batch(batch, trainer.step)
                stats = trainer.train_step(x, noise, y, interrupt.requested, time_up)
                p.batch_in_epoch += 1
                seen += len(batch) * trainer.dist.world_size
                if follow_clock and trainer.step % CLOCK_EVERY == 0:
                    elapsed = time.monotonic() - started
                    trainer.set_horizon(
                        clock_horizon(
                            trainer.step,
                            trainer.step - first_step,
                            elapsed,
                            trainer.time_limit - elapsed,
                            trainer.total_steps,
                        )
                    )
                if p.bad_in_a_row >= int(tcfg.max_bad_steps):
                    raise diverged(trainer)
                if trainer.step % int(tcfg.log_every) == 0 or trainer.step == 1:
                    rate = seen / max(time.monotonic() - tick, 1e-9)
                    tick, seen = time.monotonic(), 0
                    trainer.monitor.step(stats, rate, p.skipped_steps)
                trainer.monitor.advance()
                end_of_epoch = p.batch_in_epoch >= trainer.steps_per_epoch
                if end_of_epoch:
                    p.epoch, p.batch_in_epoch = p.epoch + 1, 0
                stop = _stop(trainer)
                if not stop:
                    periodic(trainer, end_of_epoch)
                    stop = _stop(trainer)  # periodic work may have settled a pending step
                if stop or end_of_epoch:
                    break
            if batches == 0:  # nothing left of this epoch (e.g. resumed at its very end)
                p.epoch, p.batch_in_epoch = p.epoch + 1, 0
        trainer.settle()  # every rank: the last step counts before anything is written
        interrupted = trainer.stop_seen["signalled"]
        if p.bad_in_a_row >= int(tcfg.max_bad_steps):
            raise diverged(trainer)
        trainer.monitor.close_bar()
        # Still under the signal handlers: a second SIGTERM cannot cut the save short (a
        # second Ctrl-C still aborts at once). A signal means stop now: a scheduler's grace
        # period is short, so no final evaluation or samples; the next run (ckpt=...) or
        # glow-eval gives the figures.
        if interrupted:
            if trainer.dist.is_main:
                saved = trainer.save("last.pt")
                what = f"{saved} saved" if saved is not None else trainer.last_good_text()
                trainer.monitor.log(
                    f"stopped by {interrupt.received or 'a signal'} at step {trainer.step}: "
                    f"{what}; continue with glow-train ckpt={trainer.run_dir / 'last.pt'}"
                )
                trainer.monitor.close()
            interrupt.hand_on()  # after the save: the pre-emption signal goes on to submitit
            return result(trainer, interrupted=True)
        return finish(trainer, interrupted)


def finish(trainer: LoopTrainer, interrupted: bool) -> TrainResult:
    """The last selection figure (and ``best.pt``), then the test figure of the final
    model, ``last.pt`` and the samples; the report (the run's last log lines, rank 0)
    names the split of each figure."""
    main, p, label = trainer.dist.is_main, trainer.progress, trainer.objective.metric_label
    early = stopped_early(trainer)
    if not early:  # an early stop has just evaluated this very model
        evaluate_and_keep_best(trainer)
    if trainer.selection == "val":
        p.last_test_score = trainer.evaluate("test")
        trainer.monitor.scalar(f"test/{trainer.objective.metric}", p.last_test_score, trainer.step)
    reports_best = trainer.cfg.train.early_stopping is not None and trainer.selection == "val"
    if not math.isfinite(p.last_test_score) and not (reports_best and p.best_score is not None):
        trainer.monitor.close()
        raise TrainingDiverged(
            f"the model's test {label} at step {trainer.step} is not finite: the run diverged; "
            f"{trainer.last_good_text()}"
        )
    p.finished = True  # last.pt now records a run with its final figures
    if main:
        trainer.save("last.pt")
    best, say = trainer.run_dir / "best.pt", trainer.monitor.log  # rank 0 alone speaks
    best_test = None
    if reports_best:
        best_test = _test_of_best(trainer, best)
    samples = None
    if main:
        samples = write_samples(trainer, final=True)  # from best.pt's weights if reported
        trainer.monitor.close()
    if main:
        say(f"run folder: {trainer.run_dir}")
        if best_test is not None:
            stop = (
                f"stopped early at step {trainer.step}"
                if early
                else f"ended at step {trainer.step}"
            )
            say(
                f"val {label}: {p.best_score:.4f} (best, step {p.best_step}); test {label}: "
                f"{best_test:.4f} (best.pt, the model chosen on validation; {stop}, "
                f"final model's test {p.last_test_score:.4f})"
            )
        elif trainer.selection == "val":
            say(
                f"val {label}: {p.last_val_score:.4f} (best {p.best_score:.4f}); "
                f"test {label}: {p.last_test_score:.4f} (final model, step {trainer.step})"
            )
        else:
            say(
                f"test {label}: {p.last_test_score:.4f} (best {p.best_score:.4f}, step "
                f"{trainer.step}; no validation split: best.pt was chosen on test)"
            )
        if trainer.model.num_classes > 0:
            say(f"(class-conditional: every {label} above is of p(x|y), given the label)")
        say(f"best checkpoint: {best}")
        if samples is not None:
            say(f"samples: {samples}")
    return result(trainer, interrupted, best_test, early)


def _test_of_best(trainer: LoopTrainer, best: Path) -> float | None:
    """The test figure of the weights chosen on validation, loaded into the evaluation
    model (the EMA's when there is one), which then stays at them; ``None`` without a
    finite validation figure. The weights come from memory, or from ``best`` after a
    resume."""
    if trainer.progress.best_score is None:
        return None
    weights = getattr(trainer, "best_weights", None)
    if weights is None:
        weights = objective_weights(load_checkpoint(best), ema=trainer.optim.ema is not None)
    trainer.eval_objective.load_state_dict(weights)
    score = trainer.evaluate("test")
    trainer.monitor.scalar(f"test_best/{trainer.objective.metric}", score, trainer.step)
    return score


def result(
    trainer: LoopTrainer, interrupted: bool, best_test: float | None = None, early: bool = False
) -> TrainResult:
    """The :class:`TrainResult` of the run as it stands."""
    p, best = trainer.progress, trainer.run_dir / "best.pt"
    return TrainResult(
        run_dir=trainer.run_dir,
        step=trainer.step,
        metric=trainer.objective.metric,
        best_score=p.best_score,
        last_test_score=p.last_test_score,
        best_ckpt=best if best.exists() else None,
        last_ckpt=trainer.run_dir / "last.pt",
        skipped_steps=p.skipped_steps,
        interrupted=interrupted,
        model=trainer.model,
        selection=trainer.selection,
        last_val_score=p.last_val_score,
        best_step=p.best_step,
        best_test_score=best_test,
        stopped_early=early,
    )
