"""The trainer: one run's data, objective and optimisation, put together and handed
to the loop.

`Trainer` builds the collaborators of a run from its config: the data
(loader and `EpochSampler`), the objective and its
`Stepper` (one optimisation step), the
evaluation on the held-out splits, the
`CheckpointWriter` and the
`Monitor`; `Trainer.fit` gives them to a
`TrainingLoop`.

Determinism: every random choice of a step comes from a generator seeded by
`(seed, step, rank)` (`step_seed`) and the data
order from `(seed, epoch)`, so a run resumed from a checkpoint continues exactly
as if it had never stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset

from glow_train.data import Batch, build_dataset, collate, describe_dataset, make_loader
from glow_train.data.registry import train_and_validation
from glow_train.errors import ConfigError, NonFiniteError
from glow_train.evaluation.scoring import evaluate_objective
from glow_train.likelihood.objective import Objective, build_objective
from glow_train.models import FlowModel, build_model
from glow_train.runtime.distributed import DistInfo, EpochSampler, wrap_ddp
from glow_train.runtime.precision import resolve_precision
from glow_train.runtime.tf32 import set_tf32
from glow_train.training.checks import check_config, fitted_batch_size
from glow_train.training.compiling import compile_regions, eager, resolve_compile, timed_warm_up
from glow_train.training.loop import TrainingLoop
from glow_train.training.monitor import Monitor
from glow_train.training.optim import Optimization
from glow_train.training.report import TrainingDiverged, TrainResult
from glow_train.training.saving import CheckpointWriter, Probe
from glow_train.training.schedule import total_steps
from glow_train.training.sizing import auto_keys, resolve_auto
from glow_train.training.state import Progress, checkpoint_state, restore
from glow_train.training.stepper import Stepper, step_seed
from glow_train.validate import parse_duration

__all__ = ["Trainer", "TrainResult", "TrainingDiverged", "step_seed"]

PROBE_SIZE = 16  # items of the health check run before every checkpoint


class Trainer:
    """Holds the objective, optimisation and data of one run; `fit` trains it.

    Use: `Trainer(cfg, dist, run_dir)` (the config is checked with
    `glow_train.training.check_config`), then `prepare` (ActNorm init
    or a checkpoint's state, EMA, DDP/compile wrapping), then `fit`. The step
    `train_step` (`steps`'s) can also be called directly on
    `prepare_batch`'s output.
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
        #: the precision `cfg.precision` (auto|fp32|bf16|fp16) resolves to on this device
        self.precision = resolve_precision(cfg.precision, self.device)
        self.amp_dtype = self.precision.amp_dtype

        self.spec = describe_dataset(cfg.dataset)
        if not auto_keys(cfg):  # a model setting it refuses is refused before data is read
            build_model(cfg.model, self.spec)
        if train_set is None:  # read once for both (or passed in, items of cfg.dataset's shape)
            train_set, held_out = train_and_validation(cfg.dataset)
            val_set = val_set if val_set is not None else held_out
        self.train_set = train_set
        cfg, self.auto_chosen = resolve_auto(cfg, len(train_set), check_config, self.spec.num_dims)
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
            num_workers=cfg.dataset.num_workers,
            device=self.device.type,
        )
        self.optim = Optimization(
            self.objective,
            tcfg,
            self.steps_per_epoch,
            self.device.type,
            fp16=self.amp_dtype == torch.float16,
        )
        self.monitor = Monitor(
            dist.is_main, self.objective.metric, self.objective.metric_label, self.spec.kind
        )
        #: one optimisation step of the objective (its counters: `progress`)
        self.steps = Stepper(
            self.objective,
            self.optim,
            Progress(),
            self.monitor,
            seed=self.seed,
            rank=dist.rank,
            device=self.device,
            precision=self.precision,
            class_weight=self.class_weight,
            hflip=bool(cfg.dataset.get("hflip", False)),
        )
        #: the health-checked checkpoint writer (`prepare` makes it)
        self.checkpoints: CheckpointWriter | None = None
        #: seconds spent compiling the step's regions (`None`: not compiled)
        self.compile_seconds: float | None = None

    @property
    def model(self) -> FlowModel:
        """The raw flow being trained."""
        return self.objective.flow

    @property
    def progress(self) -> Progress:
        """The run's counters (the stepper's)."""
        return self.steps.progress

    @property
    def step(self) -> int:
        """Optimisation steps taken so far."""
        return self.progress.step

    @property
    def total_steps(self) -> int | None:
        """The steps the run's limits allow (`None`: no step or epoch limit)."""
        return total_steps(self.cfg.train, self.steps_per_epoch)

    # ----------------------------------------------------------------- set-up
    def initialize_actnorm(self) -> None:
        """Data-dependent ActNorm init on the first `init_samples` of a seeded shuffle.

        Every rank uses the same items and noise, so every rank computes the same
        statistics (and DDP broadcasts rank 0's parameters on top, to be sure).
        """
        noise = torch.Generator(self.device).manual_seed(self.seed)
        self.objective.initialize(self._init_batch(), noise)

    def _init_batch(self, limit: int | None = None) -> Batch:
        """The first `train.init_samples` (at most `limit`) items of a shuffle seeded
        by `seed`, on the device."""
        n = min(int(self.cfg.train.init_samples), len(self.train_set), limit or len(self.train_set))
        gen = torch.Generator().manual_seed(self.seed)
        index = torch.randperm(len(self.train_set), generator=gen)[:n].tolist()
        return collate([self.train_set[i] for i in index]).to(self.device)

    def _make_probe(self) -> Probe:
        """A fixed small batch (with its noise) on which the checkpoint writer runs the
        model before every write."""
        batch = self._init_batch(limit=PROBE_SIZE)
        x = self.objective.prepare(batch.x)
        noise = self.objective.noise(x, torch.Generator(self.device).manual_seed(self.seed + 1))
        return x, noise, self.objective.labels(batch)

    def _objectives(self) -> list[Objective]:
        """The trained objective and the EMA's copy when there is one."""
        return [self.objective] + ([self.optim.ema.module] if self.optim.ema else [])

    def prepare(self, state: dict[str, Any] | None = None, source: Path | None = None) -> None:
        """Fresh run: ActNorm init on real data; resume: load `state`. Then the EMA
        and, last, the DDP / compile wrappers (never before the eager initialisation)."""
        if state is None:
            self.initialize_actnorm()
            self.optim.make_ema(self.objective)
        else:
            self.optim.make_ema(self.objective)
            self.steps.progress = restore(
                state,
                source,
                self.objective,
                self.optim,
                self.dist.world_size,
                self.batch_size,
                self.steps_per_epoch,
            )
        self.checkpoints = CheckpointWriter(
            self.run_dir, self.state_dict, self._objectives, self._make_probe(), self.monitor
        )
        if state is not None:
            if not self.checkpoints.healthy():
                raise NonFiniteError(
                    f"{source} holds a model whose outputs are not finite (a diverged run); "
                    "resume from an earlier checkpoint"
                )
            self.checkpoints.last_good = (source, self.step)
        self._wrap()

    def _wrap(self) -> None:
        """DDP and compile come after the eager ActNorm initialisation; a compiled run
        compiles its regions now, on one training-sized batch (`compile_seconds`)."""
        tcfg = self.cfg.train
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = bool(tcfg.cudnn_benchmark)
            set_tf32(bool(tcfg.tf32))
        wrapped: torch.nn.Module = self.objective
        if self.dist.distributed:
            wrapped = wrap_ddp(wrapped, self.device)
        self.steps.wrapped = wrapped
        if resolve_compile(tcfg.compile, self.device):
            compile_regions(self.objective, str(tcfg.compile_mode))
            self.compile_seconds = timed_warm_up(self._warm_up_step, self.device)

    def _warm_up_step(self) -> None:
        """A forward and backward pass on the first training-sized batch, as the step runs
        it (same shapes, layout and precision); the gradients are then dropped."""
        batch = collate([self.train_set[i] for i in range(self.batch_size)])
        x, noise, y = self.steps.prepare_batch(batch, 0)
        with self.precision.autocast(self.device.type):
            nll = self.objective(x, noise, y, self.class_weight)
        self.objective.score(nll).mean().backward()
        self.optim.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds: config, model, dequantiser, optimiser, EMA, counters."""
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
    def prepare_batch(
        self, batch: Batch, step: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """`glow_train.training.stepper.Stepper.prepare_batch`."""
        return self.steps.prepare_batch(batch, step)

    def train_step(
        self,
        x: torch.Tensor,
        noise: torch.Tensor | None,
        y: torch.Tensor | None = None,
        signalled: bool = False,
        time_up: bool = False,
    ) -> dict[str, Any]:
        """`glow_train.training.stepper.Stepper.train_step`."""
        return self.steps.train_step(x, noise, y, signalled, time_up)

    def settle(self) -> None:
        """`glow_train.training.stepper.Stepper.settle`."""
        self.steps.settle()

    # ------------------------------------------------------------ evaluation
    @property
    def eval_objective(self) -> Objective:
        """The EMA's copy of the objective when there is one, else the trained one."""
        return self.steps.eval_objective

    def evaluate(self, split: str = "test") -> float:
        """The EMA's (or the model's) score on `split` (`"val"` or `"test"`)."""
        with eager():  # compiled regions: as trained, no second compilation for evaluation
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

    def fit(self) -> TrainResult:
        """Train until a limit, a signal or divergence; always end with a checkpoint
        (`glow_train.training.loop.TrainingLoop.run`). Call `prepare` first."""
        if self.checkpoints is None:
            raise RuntimeError("Trainer.fit() needs Trainer.prepare() first")
        loop = TrainingLoop(
            self.cfg.train,
            self.dist,
            self.run_dir,
            seed=self.seed,
            spec=self.spec,
            loader=self.loader,
            sampler=self.sampler,
            batch_size=self.batch_size,
            steps_per_epoch=self.steps_per_epoch,
            steps=self.steps,
            evaluate=self.evaluate,
            checkpoints=self.checkpoints,
            monitor=self.monitor,
            time_limit=self.time_limit,
            selection=self.selection,
        )
        return loop.run()
