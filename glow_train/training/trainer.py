"""The trainer: one objective, its data and its optimisation, and the loop that trains it.

Determinism: every random choice of a step (flips, dequantisation noise) comes
from a generator seeded by ``(seed, step, rank)`` and the data order from
``(seed, epoch)`` (:class:`glow_train.distributed.EpochSampler`), so a run resumed
from a checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from glow_train.checkpoint import save_checkpoint
from glow_train.data import Batch, build_dataset, collate, describe_dataset, make_loader
from glow_train.data.registry import train_and_validation
from glow_train.distributed import DistInfo, EpochSampler, all_reduce_max
from glow_train.errors import ConfigError, NonFiniteError
from glow_train.models import FlowModel, build_model
from glow_train.objective import Objective, build_objective
from glow_train.precision import resolve_precision
from glow_train.scoring import evaluate_objective
from glow_train.training.checks import check_config, fitted_batch_size
from glow_train.training.loop import TrainingDiverged, TrainResult, fit
from glow_train.training.monitor import Monitor
from glow_train.training.optim import Optimization, StepOutcome
from glow_train.training.schedule import total_steps
from glow_train.training.sizing import auto_keys, resolve_auto
from glow_train.training.state import Progress, checkpoint_state, restore
from glow_train.validate import parse_duration

__all__ = ["Trainer", "TrainResult", "TrainingDiverged", "step_seed"]

PROBE_SIZE = 16  # items of the health check run before every checkpoint


def step_seed(seed: int, step: int, rank: int) -> int:
    """A distinct 63-bit seed for each (run seed, step, rank)."""
    return (seed * 1_000_003 + step * 1_009 + rank * 7_919 + 17) % (2**63 - 1)


class Trainer:
    """Holds the objective, optimisation and data of one run; :meth:`fit` trains it.

    Use: ``Trainer(cfg, dist, run_dir)`` (the config is checked with
    :func:`glow_train.training.check_config`), then :meth:`prepare` (ActNorm init
    or a checkpoint's state, EMA, DDP/compile wrapping), then :meth:`fit`. The step
    :meth:`train_step` can also be called directly on :meth:`prepare_batch`'s output.
    """

    def __init__(
        self,
        cfg: DictConfig,
        dist: DistInfo,
        run_dir: Path | None,
        train_set: Dataset | None = None,
        test_set: Dataset | None = None,
        val_set: Dataset | None = None,
    ):
        cfg = check_config(cfg)
        self.dist, self.run_dir, self.device, tcfg = dist, run_dir, dist.device, cfg.train
        self.seed = int(cfg.seed)
        self.time_limit = parse_duration(tcfg.time_limit)
        #: the precision ``cfg.precision`` (auto|fp32|bf16|fp16) resolves to on this device
        self.precision = resolve_precision(cfg.precision, self.device)
        self.amp_dtype = self.precision.amp_dtype

        self.spec = describe_dataset(cfg.dataset)
        if not auto_keys(cfg):  # a model setting it refuses is refused before data is read
            build_model(cfg.model, self.spec)
        if train_set is None:  # read once for both (or passed in, items of cfg.dataset's shape)
            train_set, held_out = train_and_validation(cfg.dataset)
            val_set = val_set if val_set is not None else held_out
        self.train_set = train_set
        cfg, self.auto_chosen = resolve_auto(cfg, len(train_set), check=check_config)
        self.cfg, tcfg = cfg, cfg.train
        torch.manual_seed(self.seed)
        flow = build_model(cfg.model, self.spec)
        flow.set_memory_saving(bool(tcfg.memory_saving))
        self.class_weight = float(tcfg.class_loss_weight)  # the auxiliary class loss's
        deq = str(tcfg.dequantization)
        self.objective = build_objective(flow, self.spec, deq, self.class_weight).to(self.device)
        self.test_set = test_set if test_set is not None else build_dataset(cfg.dataset, "test")
        self.val_set = val_set if val_set is not None and len(val_set) > 0 else None
        #: the split best.pt is chosen on: validation when there is one, never test if so
        self.selection = "val" if self.val_set is not None else "test"
        self.batch_size = int(cfg.dataset.batch_size)
        self.sampler = EpochSampler(
            len(self.train_set), seed=self.seed, rank=dist.rank, world_size=dist.world_size
        )
        self.batch_size = fitted_batch_size(self.batch_size, self.sampler.per_rank, dist.is_main)
        self.steps_per_epoch = self.sampler.per_rank // self.batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"dataset.batch_size={self.batch_size} is larger than the "
                f"{self.sampler.per_rank} training items per process; lower it"
            )
        if tcfg.cosine_decay and self.total_steps is None and self.time_limit is None:
            raise ConfigError(
                "train.cosine_decay needs train.max_steps, train.max_epochs or "
                "train.time_limit to decay over (or train.cosine_decay=false)"
            )
        self.loader = make_loader(
            self.train_set,
            self.batch_size,
            sampler=self.sampler,
            drop_last=True,
            num_workers=int(cfg.dataset.num_workers),
            device=self.device.type,
        )
        self.optim = Optimization(
            self.objective,
            tcfg,
            self.steps_per_epoch,
            self.device.type,
            fp16=self.amp_dtype == torch.float16,
        )
        self.progress = Progress()
        self.stop_seen = {"signalled": False, "time_up": False}  # on any rank, agreed
        self.last_good: tuple[Path, int] | None = None  # the newest checkpoint saved healthy
        self.probe: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]
        self.wrapped: torch.nn.Module = self.objective
        self.monitor = Monitor(dist.is_main, self.objective.metric, self.objective.metric_label)

    @property
    def model(self) -> FlowModel:
        """The raw flow being trained."""
        return self.objective.flow

    @property
    def step(self) -> int:
        return self.progress.step

    @property
    def total_steps(self) -> int | None:
        return total_steps(self.cfg.train, self.steps_per_epoch)

    # ----------------------------------------------------------------- set-up
    def initialize_actnorm(self) -> None:
        """Data-dependent ActNorm init on the first ``init_samples`` of a seeded shuffle.

        Every rank uses the same items and noise, so every rank computes the same
        statistics (and DDP broadcasts rank 0's parameters on top, to be sure).
        """
        noise = torch.Generator(self.device).manual_seed(self.seed)
        self.objective.initialize(self._init_batch(), noise)

    def _init_batch(self, limit: int | None = None) -> Batch:
        """The first ``train.init_samples`` (at most ``limit``) items of a shuffle seeded
        by ``seed``, on the device."""
        n = min(int(self.cfg.train.init_samples), len(self.train_set), limit or len(self.train_set))
        gen = torch.Generator().manual_seed(self.seed)
        index = torch.randperm(len(self.train_set), generator=gen)[:n].tolist()
        return collate([self.train_set[i] for i in index]).to(self.device)

    def _make_probe(self) -> None:
        """A fixed small batch (with its noise) on which :meth:`healthy` runs the model."""
        batch = self._init_batch(limit=PROBE_SIZE)
        x = self.objective.prepare(batch.x)
        noise = self.objective.noise(x, torch.Generator(self.device).manual_seed(self.seed + 1))
        self.probe = (x, noise, self.objective.labels(batch))

    @torch.no_grad()
    def healthy(self) -> bool:
        """Whether the trained weights, and the EMA's, give finite log-likelihoods on the
        probe batch: what a checkpoint must satisfy before it is written as good."""
        x, noise, y = self.probe
        objectives = [self.objective] + ([self.optim.ema.module] if self.optim.ema else [])
        return all(bool(torch.isfinite(o(x, noise, y)).all()) for o in objectives)

    def prepare(self, state: dict[str, Any] | None = None, source: Path | None = None) -> None:
        """Fresh run: ActNorm init on real data; resume: load ``state``. Then the EMA
        and, last, the DDP / compile wrappers (never before the eager initialisation)."""
        if state is None:
            self.initialize_actnorm()
            self.optim.make_ema(self.objective)
        else:
            self.optim.make_ema(self.objective)
            self.progress = restore(
                state,
                source,
                self.objective,
                self.optim,
                self.dist.world_size,
                self.batch_size,
                self.steps_per_epoch,
            )
        self._make_probe()
        if state is not None:
            if not self.healthy():
                raise NonFiniteError(
                    f"{source} holds a model whose outputs are not finite (a diverged run); "
                    "resume from an earlier checkpoint"
                )
            self.last_good = (source, self.step)
        self._wrap()

    def _wrap(self) -> None:
        """DDP and compile come after the eager ActNorm initialisation."""
        wrapped: torch.nn.Module = self.objective
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(wrapped, device_ids=ids)
        if self.cfg.train.compile:
            wrapped = torch.compile(wrapped)
        self.wrapped = wrapped
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = bool(self.cfg.train.cudnn_benchmark)

    def state_dict(self) -> dict[str, Any]:
        return checkpoint_state(
            self.cfg,
            self.objective,
            self.spec,
            self.optim,
            self.progress,
            self.dist.world_size,
            self.batch_size,
            self.selection,
        )

    # ------------------------------------------------------------------ steps
    def _autocast(self):
        return self.precision.autocast(self.device.type)

    def prepare_batch(
        self, batch: Batch, step: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """A loader batch -> ``(x, noise, y)`` for :meth:`train_step`: flipped (if
        ``dataset.hflip``), on the model's grid, with its dequantisation noise."""
        gen = torch.Generator(self.device).manual_seed(step_seed(self.seed, step, self.dist.rank))
        batch = batch.to(self.device, non_blocking=True)
        data = batch.x
        if self.cfg.dataset.get("hflip", False):
            flip = torch.rand(data.shape[0], generator=gen, device=self.device) < 0.5
            data = torch.where(flip.view(-1, *([1] * (data.dim() - 1))), data.flip(-1), data)
        x = self.objective.prepare(data)
        noise = self.objective.noise(x, gen)
        return x, noise, self.objective.labels(batch)

    def train_step(
        self,
        x: torch.Tensor,
        noise: torch.Tensor | None,
        y: torch.Tensor | None = None,
        signalled: bool = False,
        time_up: bool = False,
    ) -> dict[str, Any]:
        """One optimiser step; skipped if anything is non-finite (see
        :meth:`glow_train.training.optim.Optimization.step`). Returns the figures of
        the step whose outcome became known: this one, or under the deferred step
        (the default) the previous one, whose flags the device finished meanwhile."""
        if not self.objective.training:  # evaluation and sampling switch it back after them
            self.objective.train()
        self.optim.optimizer.zero_grad(set_to_none=True)
        # dropout draws from the global generator: seed it per (seed, step, rank) too,
        # so a resumed run drops the same units whatever ran in between
        torch.manual_seed(step_seed(self.seed, self.step, self.dist.rank) + 1)
        with self._autocast():
            nll = self.wrapped(x, noise, y, self.class_weight)
        loss = self.objective.score(nll).mean()
        deferred = self.optim.deferred
        outcome = self.optim.step(self.objective, loss, signalled, time_up)
        self.progress.step += 1
        return self._record(outcome, self.progress.step - 1 if deferred else self.progress.step)

    def _record(self, outcome: StepOutcome | None, step: int) -> dict[str, Any]:
        """Count the outcome of step ``step`` once it is known; the figures the loop logs
        (``score`` and ``grad_norm`` are ``None`` when no outcome is known yet). A signal
        or the time limit seen on any rank is kept in :attr:`stop_seen`."""
        if outcome is None:  # the first deferred step: nothing known yet
            return {"step": step, "score": None, "grad_norm": None, "lr": self.optim.lr}
        self.stop_seen["signalled"] |= outcome.signalled
        self.stop_seen["time_up"] |= outcome.time_up
        self.progress.count(outcome)
        return {
            "step": step,
            "score": outcome.loss,
            "grad_norm": outcome.grad_norm,
            "skipped": outcome.skipped,
            "overflow": outcome.overflow,
            "lr": self.optim.lr,
        }

    def set_horizon(self, estimate: int | None) -> None:
        """Let the cosine decay end at the clock's estimate of the final step; every
        rank takes the smallest estimate, so the schedule stays the same everywhere."""
        value = torch.tensor([-(estimate if estimate is not None else 2**62)], device=self.device)
        agreed = -int(all_reduce_max(value).item())
        if agreed < 2**62:
            self.optim.horizon = agreed
            self.monitor.scalar("schedule_horizon", agreed, self.step)

    def settle(self) -> None:
        """Count the deferred step's outcome now, before anything reads the state
        (evaluation, checkpoints, the end of the run)."""
        outcome = self.optim.flush()
        if outcome is not None:
            self._record(outcome, self.progress.step)

    # ------------------------------------------------------------ evaluation
    @property
    def eval_objective(self) -> Objective:
        """The EMA's copy of the objective when there is one, else the trained one."""
        return self.optim.ema.module if self.optim.ema is not None else self.objective

    def evaluate(self, split: str = "test") -> float:
        """The EMA's (or the model's) score on ``split`` (``"val"`` or ``"test"``)."""
        result = evaluate_objective(
            self.eval_objective,
            self.val_set if split == "val" else self.test_set,
            batch_size=int(self.cfg.dataset.eval_batch_size),
            device=self.device,
            seed=int(self.cfg.train.eval_seed),
            dist=self.dist,
        )
        self.objective.train()
        return result.value

    def save(self, name: str) -> Path | None:
        """Write ``run_dir/name`` if the model is :meth:`healthy`; else keep the file
        there is, say so, and return ``None``."""
        if not self.healthy():
            self.monitor.log(
                f"step {self.step}: the model's outputs are not finite; {name} not written "
                f"({self.last_good_text()})"
            )
            return None
        path = save_checkpoint(self.state_dict(), self.run_dir / name)
        self.last_good = (path, self.step)
        return path

    def last_good_text(self) -> str:
        """``last good checkpoint: <path> (step N)``, or that there is none."""
        if self.last_good is None:
            return "no good checkpoint was written"
        path, step = self.last_good
        return f"last good checkpoint: {path} (step {step})"

    def fit(self) -> TrainResult:
        """Train until a limit, a signal or divergence; always end with a checkpoint
        (:func:`glow_train.training.loop.fit`)."""
        return fit(self)
