"""The bits/dim trainer: ``train(cfg)`` runs one training job end to end.

Objective: the mean bits/dim of a dequantised batch (:mod:`glow_train.likelihood`).
The run folder holds ``config.yaml``, ``last.pt`` / ``best.pt`` (see
:mod:`glow_train.checkpoint`), TensorBoard events under ``tb/`` and sample grids
under ``samples/``.

Determinism: every random choice of a step (flips, dequantisation noise) comes
from a generator seeded by ``(seed, step, rank)`` and the data order from
``(seed, epoch)`` (:class:`glow_train.distributed.EpochSampler`), so a run resumed
from a checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import math
import re
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import Dataset
from tqdm import tqdm

from glow_train import __version__
from glow_train.checkpoint import load_checkpoint, save_checkpoint
from glow_train.data import build_dataset, image_shape, make_loader, validate_dataset_config
from glow_train.distributed import (
    DistInfo,
    EpochSampler,
    all_reduce_max,
    broadcast_object,
    cleanup_distributed,
    setup_distributed,
)
from glow_train.errors import CheckpointError, ConfigError, GlowError
from glow_train.evaluate import evaluate_bpd
from glow_train.likelihood import bits_per_dim, preprocess
from glow_train.model import Glow
from glow_train.sample import sample_grid

__all__ = ["train", "TrainResult", "Trainer", "parse_duration", "build_model", "TrainingDiverged"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MODEL_KEYS = ("K", "L", "hidden_channels", "coupling", "lu")


class TrainingDiverged(GlowError):
    """Too many consecutive non-finite steps."""


@dataclass
class TrainResult:
    """What a finished run left: its folder, checkpoints, figures and the trained model."""

    run_dir: Path
    step: int
    best_bpd: float | None
    last_test_bpd: float | None
    best_ckpt: Path | None
    last_ckpt: Path
    skipped_steps: int
    interrupted: bool
    model: Glow  # the raw (unwrapped) model; EMA weights are in the checkpoints


def parse_duration(value: Any) -> float | None:
    """``"120s"``, ``"90m"``, ``"2h"``, ``"1.5h"`` or plain seconds -> seconds (None stays None)."""
    if value is None:
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smh]?)\s*", str(value))
        if not match:
            raise ConfigError(
                f"train.time_limit={value!r} is not a duration; use e.g. 120s, 90m, 2h or seconds"
            )
        seconds = float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]
    if seconds <= 0:
        raise ConfigError(f"train.time_limit must be positive, got {value!r}")
    return seconds


def step_seed(seed: int, step: int, rank: int) -> int:
    """A distinct 63-bit seed for each (run seed, step, rank)."""
    return (seed * 1_000_003 + step * 1_009 + rank * 7_919 + 17) % (2**63 - 1)


def build_model(cfg: DictConfig) -> Glow:
    """The Glow described by ``cfg.model`` for the images of ``cfg.dataset``."""
    channels, height, width = image_shape(cfg.dataset)
    L = int(cfg.model.L)
    if height % 2**L or width % 2**L:
        raise ConfigError(
            f"dataset.image_size={height} is not divisible by 2^L = {2**L} (model.L={L}); "
            f"use an image size that is a multiple of {2**L} or a smaller model.L"
        )
    try:
        return Glow(
            in_channels=channels,
            image_size=(height, width),
            **{k: cfg.model[k] for k in MODEL_KEYS},
        )
    except ValueError as err:
        raise ConfigError(f"model: {err}") from err


class _Interrupt:
    """SIGINT/SIGTERM -> stop at the next step boundary; a second SIGINT aborts at once."""

    def __init__(self, verbose: bool = True):
        self.requested = False
        self.verbose = verbose
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self.verbose:
            tqdm.write(
                f"{signal.Signals(signum).name}: saving a checkpoint at the end of this step "
                "(Ctrl-C again to abort)"
            )

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Holds the model, optimiser and data of one run; :meth:`fit` trains it.

    Use: ``Trainer(cfg, dist, run_dir)``, then :meth:`prepare` (ActNorm init or a
    checkpoint's state, EMA, DDP/compile wrapping), then :meth:`fit`. The step
    function :meth:`train_step` can also be called directly on model-space input.
    """

    def __init__(
        self,
        cfg: DictConfig,
        dist: DistInfo,
        run_dir: Path | None,
        train_set: Dataset | None = None,
        test_set: Dataset | None = None,
    ):
        self.cfg, self.dist, self.run_dir = cfg, dist, run_dir
        self.device = dist.device
        tcfg = cfg.train
        self.n_bits = int(cfg.dataset.n_bits)
        self.seed = int(cfg.seed)
        self.time_limit = parse_duration(tcfg.time_limit)
        if cfg.precision not in PRECISIONS:
            raise ConfigError(f"precision={cfg.precision!r}; use fp32, bf16 or fp16")
        self.amp_dtype = PRECISIONS[cfg.precision]
        if self.amp_dtype == torch.float16 and self.device.type != "cuda":
            raise ConfigError("precision=fp16 needs a CUDA device; use precision=bf16 on CPU")
        if tcfg.optimizer not in ("adam", "adamax"):
            raise ConfigError(f"train.optimizer={tcfg.optimizer!r}; use adam or adamax")
        _check_training_numbers(tcfg)
        if all(tcfg[k] is None for k in ("max_steps", "max_epochs", "time_limit")):
            raise ConfigError(
                "no stopping rule: set train.max_steps, train.max_epochs or train.time_limit"
            )

        validate_dataset_config(cfg.dataset)
        torch.manual_seed(self.seed)
        self.model = build_model(cfg).to(self.device)
        self.model.set_memory_saving(bool(tcfg.get("memory_saving", False)))
        if tcfg.channels_last and self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        # Datasets can be passed in (uint8 (C, H, W) images of cfg.dataset's shape).
        self.train_set = train_set if train_set is not None else build_dataset(cfg.dataset, "train")
        self.test_set = test_set if test_set is not None else build_dataset(cfg.dataset, "test")
        self.batch_size = int(cfg.dataset.batch_size)
        self.sampler = EpochSampler(
            len(self.train_set), seed=self.seed, rank=dist.rank, world_size=dist.world_size
        )
        self.steps_per_epoch = self.sampler.per_rank // self.batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"dataset.batch_size={self.batch_size} is larger than the "
                f"{self.sampler.per_rank} training images per process; lower it"
            )
        if tcfg.cosine_decay and self._total_steps() is None:
            raise ConfigError(
                "train.cosine_decay needs train.max_steps or train.max_epochs to decay over "
                "(or train.cosine_decay=false)"
            )
        self.loader = make_loader(
            self.train_set,
            self.batch_size,
            sampler=self.sampler,
            drop_last=True,
            num_workers=int(cfg.dataset.num_workers),
            device=self.device.type,
        )

        params = [p for p in self.model.parameters() if p.requires_grad]
        opt_cls = torch.optim.Adam if tcfg.optimizer == "adam" else torch.optim.Adamax
        self.optimizer = opt_cls(
            params,
            lr=float(tcfg.lr),
            betas=tuple(tcfg.betas),
            weight_decay=float(tcfg.weight_decay),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.ema: AveragedModel | None = None
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_bpd: float | None = None
        self.last_test_bpd: float | None = None
        self.skipped_steps = 0
        self.overflow_steps = 0
        self.bad_in_a_row = 0
        self.wrapped: torch.nn.Module = self.model
        self.writer = None

    # ----------------------------------------------------------------- set-up
    def _lr_factor(self, step: int) -> float:
        tcfg = self.cfg.train
        warmup = int(tcfg.warmup_steps or 0)
        if step < warmup:
            return (step + 1) / warmup
        if tcfg.cosine_decay:
            total = max(self._total_steps() - warmup, 1)
            progress = min((step - warmup) / total, 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    def initialize_actnorm(self) -> None:
        """Data-dependent ActNorm init on the first ``init_samples`` of a seeded shuffle.

        Every rank uses the same images and noise, so every rank computes the same
        statistics (and DDP broadcasts rank 0's parameters on top, to be sure).
        """
        n = min(int(self.cfg.train.init_samples), len(self.train_set))
        gen = torch.Generator().manual_seed(self.seed)
        index = torch.randperm(len(self.train_set), generator=gen)[:n].tolist()
        images = torch.stack([self.train_set[i][0] for i in index]).to(self.device)
        x = preprocess(images, self.n_bits, torch.Generator(self.device).manual_seed(self.seed))
        self.model.initialize(x)

    def prepare(self, state: dict[str, Any] | None = None, source: Path | None = None) -> None:
        """Fresh run: ActNorm init on real images; resume: load ``state``. Then the EMA
        and, last, the DDP / compile wrappers (never before the eager initialisation)."""
        if state is None:
            self.initialize_actnorm()
            self._make_ema()
        else:
            self._make_ema()
            self.load_state_dict(state, source)
        self._wrap()

    def _make_ema(self) -> None:
        decay = self.cfg.train.ema_decay
        if decay is not None:
            self.ema = AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(float(decay)), use_buffers=False
            )

    def _wrap(self) -> None:
        """DDP and compile come after the eager ActNorm initialisation."""
        wrapped: torch.nn.Module = self.model
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(wrapped, device_ids=ids)
        if self.cfg.train.compile:
            wrapped = torch.compile(wrapped)
        self.wrapped = wrapped
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = bool(self.cfg.train.cudnn_benchmark)

    def state_dict(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "version": __version__,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "model_config": dict(self.model.config),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "world_size": self.dist.world_size,
            "batch_size": self.batch_size,
            "best_bpd": self.best_bpd,
            "last_test_bpd": self.last_test_bpd,
            "skipped_steps": self.skipped_steps,
            "overflow_steps": self.overflow_steps,
            "rng": rng,
        }

    def load_state_dict(self, state: dict[str, Any], source: Path) -> None:
        if state["model_config"] != self.model.config:
            diff = sorted(
                k
                for k in set(state["model_config"]) | set(self.model.config)
                if state["model_config"].get(k) != self.model.config.get(k)
            )
            raise CheckpointError(
                f"{source} holds a model with a different configuration ({', '.join(diff)}: "
                f"checkpoint {[state['model_config'].get(k) for k in diff]} vs run "
                f"{[self.model.config.get(k) for k in diff]}); resume without changing "
                "model or dataset settings, or start a new run"
            )
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            else:  # EMA switched on at resume: start it from the current weights
                self.ema.module.load_state_dict(state["model"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as err:
            raise CheckpointError(f"{source}: optimiser state does not fit: {err}") from err
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        if state["world_size"] * state["batch_size"] != self.dist.world_size * self.batch_size:
            # A different global batch: continue at the same fraction of the epoch.
            seen = self.batch_in_epoch * state["batch_size"] * state["world_size"]
            self.batch_in_epoch = seen // (self.batch_size * self.dist.world_size)
        if self.batch_in_epoch >= self.steps_per_epoch:  # less than a batch left
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.best_bpd = state.get("best_bpd")
        self.last_test_bpd = state.get("last_test_bpd")
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.overflow_steps = int(state.get("overflow_steps", 0))
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            try:
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
            except (RuntimeError, IndexError):
                pass  # a different number of GPUs: the trainer's randomness does not need it

    # ------------------------------------------------------------------ steps
    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def prepare_batch(self, images: torch.Tensor, step: int) -> torch.Tensor:
        """uint8 batch -> flipped (if configured), dequantised model input."""
        gen = torch.Generator(self.device).manual_seed(step_seed(self.seed, step, self.dist.rank))
        images = images.to(self.device, non_blocking=True)
        if self.cfg.dataset.get("hflip", False):
            flip = torch.rand(images.shape[0], generator=gen, device=self.device) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        x = preprocess(images, self.n_bits, gen)
        if self.cfg.train.channels_last and self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def train_step(
        self, x: torch.Tensor, signalled: bool = False, time_up: bool = False
    ) -> dict[str, Any]:
        """One optimiser step on model-space input ``x``; skipped if anything is non-finite.

        A skipped step changes no weight, optimiser moment, EMA average or schedule.
        With fp16, a gradient overflow at a finite loss is the GradScaler's business: it
        skips the step and lowers its scale (counted in ``overflow_steps``). Ranks agree
        on all of this, and on stopping (a signal or the time limit on any rank), through
        one all-reduce, so they always stop at the same step.
        """
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            log_prob = self.wrapped(x)
        loss = bits_per_dim(log_prob, self.model.num_dims, self.n_bits).mean()
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.train.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), float(clip) if clip is not None else float("inf")
        )
        flags = torch.stack(
            [
                (~torch.isfinite(loss.detach())).float(),
                (~torch.isfinite(grad_norm)).float(),
                torch.tensor(float(signalled), device=loss.device),
                torch.tensor(float(time_up), device=loss.device),
            ]
        )
        loss_bad, grad_bad, signalled, time_up = (bool(v) for v in all_reduce_max(flags).tolist())
        overflow = grad_bad and not loss_bad and self.scaler.is_enabled()
        skipped = (loss_bad or grad_bad) and not overflow
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
            self.skipped_steps += 1
            self.bad_in_a_row += 1
        else:
            self.scaler.step(self.optimizer)  # skips the update itself on an overflow
            self.scaler.update()
            if overflow:
                self.overflow_steps += 1
            else:
                self.bad_in_a_row = 0
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
        self.step += 1
        return {
            "bpd": loss.item(),
            "grad_norm": grad_norm.item(),
            "skipped": skipped,
            "overflow": overflow,
            "signalled": signalled,
            "time_up": time_up,
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    # ------------------------------------------------------------ evaluation
    @property
    def eval_model(self) -> Glow:
        return self.ema.module if self.ema is not None else self.model

    def evaluate(self) -> float:
        result = evaluate_bpd(
            self.eval_model,
            self.test_set,
            n_bits=self.n_bits,
            batch_size=int(self.cfg.dataset.eval_batch_size),
            device=self.device,
            seed=int(self.cfg.train.eval_seed),
            dist=self.dist,
        )
        self.model.train()
        return result.bpd

    def write_samples(self, final: bool = False) -> Path | None:
        grid = sample_grid(
            self.eval_model,
            n=int(self.cfg.train.num_samples),
            temperatures=list(self.cfg.train.sample_temperatures),
            n_bits=self.n_bits,
            seed=self.seed,
            nrow=int(math.ceil(math.sqrt(int(self.cfg.train.num_samples)))),
        )
        self.model.train()
        if self.writer is not None:
            for temperature, image in grid.items():
                self.writer.add_image(f"samples/T={temperature:g}", image, self.step)
        if not final:
            return None
        from torchvision.utils import save_image

        out = self.run_dir / "samples.png"
        temperature = 0.7 if 0.7 in grid else next(iter(grid))
        save_image(grid[temperature], out)
        return out

    def save(self, name: str) -> Path:
        return save_checkpoint(self.state_dict(), self.run_dir / name)

    # ------------------------------------------------------------------- loop
    def _reached_limits(self) -> bool:
        """The step and epoch limits (the same on every rank, unlike the clock)."""
        tcfg = self.cfg.train
        if tcfg.max_steps is not None and self.step >= int(tcfg.max_steps):
            return True
        return tcfg.max_epochs is not None and self.epoch >= int(tcfg.max_epochs)

    def _total_steps(self) -> int | None:
        tcfg = self.cfg.train
        limits = []
        if tcfg.max_steps is not None:
            limits.append(int(tcfg.max_steps))
        if tcfg.max_epochs is not None:
            limits.append(int(tcfg.max_epochs) * self.steps_per_epoch)
        return min(limits) if limits else None

    def _log(self, message: str) -> None:
        if self.dist.is_main:
            tqdm.write(message)

    def _eval_and_checkpoint(self) -> None:
        bpd = self.evaluate()
        self.last_test_bpd = bpd
        improved = self.best_bpd is None or bpd < self.best_bpd
        if improved:
            self.best_bpd = bpd
        if self.writer is not None:
            self.writer.add_scalar("test/bpd", bpd, self.step)
        self._log(
            f"step {self.step} epoch {self.epoch}: test bpd {bpd:.4f}"
            + (" (best)" if improved else f" (best {self.best_bpd:.4f})")
        )
        if self.dist.is_main and improved:
            self.save("best.pt")

    def _log_step(self, stats: dict[str, Any], rate: float, bar: tqdm) -> None:
        if self.writer is not None:
            for key, value in (
                ("train/bpd", stats["bpd"]),
                ("lr", stats["lr"]),
                ("grad_norm", stats["grad_norm"]),
                ("images_per_sec", rate),
                ("skipped_steps", self.skipped_steps),
            ):
                self.writer.add_scalar(key, value, self.step)
        bar.set_postfix(
            bpd=f"{stats['bpd']:.3f}",
            lr=f"{stats['lr']:.1e}",
            img_s=f"{rate:.0f}",
            skipped=self.skipped_steps,
            refresh=False,
        )

    def _diverged(self) -> TrainingDiverged:
        tcfg = self.cfg.train
        last = self.run_dir / "last.pt"
        kept = f"last good checkpoint: {last}" if last.exists() else "no checkpoint written yet"
        return TrainingDiverged(
            f"{self.bad_in_a_row} consecutive steps had a non-finite loss or gradient "
            f"(step {self.step}); likely causes: a learning rate too high "
            f"(train.lr={tcfg.lr}), too short a warm-up (train.warmup_steps="
            f"{tcfg.warmup_steps}), or affine coupling (try model.coupling=additive); {kept}"
        )

    def _periodic(self, end_of_epoch: bool) -> None:
        """Evaluation, sample grids and ``last.pt`` when their step (or epoch) comes."""
        tcfg, main = self.cfg.train, self.dist.is_main
        eval_now = tcfg.eval_every_steps is not None and self.step % int(tcfg.eval_every_steps) == 0
        every_epochs = tcfg.eval_every_epochs
        if end_of_epoch and every_epochs is not None and self.epoch % int(every_epochs) == 0:
            eval_now = True
        if eval_now:
            self._eval_and_checkpoint()
        if main and tcfg.sample_every is not None and self.step % int(tcfg.sample_every) == 0:
            self.write_samples()
        if main and tcfg.ckpt_every and self.step % int(tcfg.ckpt_every) == 0:
            self.save("last.pt")

    def fit(self) -> TrainResult:
        """Train until a limit, a signal or divergence; always end with a checkpoint."""
        tcfg = self.cfg.train
        main = self.dist.is_main
        if main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"))
        bar = tqdm(
            total=self._total_steps(),
            initial=self.step,
            disable=not (main and tcfg.progress),
            dynamic_ncols=True,
            unit="step",
            # a log file (cluster job) gets a line every 30 s, not ten a second
            mininterval=0.1 if sys.stderr.isatty() else 30.0,
        )
        started = time.monotonic()
        stop = self._reached_limits()
        interrupted = False
        with _Interrupt(verbose=main) as interrupt:
            while not stop:
                self.sampler.set_epoch(self.epoch, self.batch_in_epoch * self.batch_size)
                tick, images_seen, batches = time.monotonic(), 0, 0
                for images, _labels in self.loader:
                    batches += 1
                    time_up = (
                        self.time_limit is not None
                        and time.monotonic() - started >= self.time_limit
                    )
                    x = self.prepare_batch(images, self.step)
                    stats = self.train_step(x, interrupt.requested, time_up)
                    self.batch_in_epoch += 1
                    images_seen += images.shape[0] * self.dist.world_size
                    if self.bad_in_a_row >= int(tcfg.max_bad_steps):
                        raise self._diverged()
                    if self.step % int(tcfg.log_every) == 0 or self.step == 1:
                        rate = images_seen / max(time.monotonic() - tick, 1e-9)
                        tick, images_seen = time.monotonic(), 0
                        self._log_step(stats, rate, bar)
                    bar.update(1)
                    end_of_epoch = self.batch_in_epoch >= self.steps_per_epoch
                    if end_of_epoch:
                        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    # every rank takes the same decision: the flags were all-reduced
                    interrupted = stats["signalled"]
                    stop = interrupted or stats["time_up"] or self._reached_limits()
                    if stop:
                        break
                    self._periodic(end_of_epoch)
                    if end_of_epoch:
                        break
                if batches == 0:  # nothing left of this epoch (e.g. resumed at its very end)
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            bar.close()
            # Still under the signal handlers: a second SIGTERM cannot cut the final save
            # short (a second Ctrl-C still aborts at once).
            if interrupted and main:
                self._log(f"interrupted at step {self.step}: writing {self.run_dir / 'last.pt'}")
                self.save("last.pt")  # first, before the (possibly long) final evaluation
            return self._finish(interrupted)

    def _finish(self, interrupted: bool) -> TrainResult:
        main = self.dist.is_main
        self._eval_and_checkpoint()
        samples = None
        if main:
            self.save("last.pt")
            samples = self.write_samples(final=True)
            self.writer.close()
        best = self.run_dir / "best.pt"
        if main:
            print(f"run folder: {self.run_dir}")
            best_bpd, step = self.best_bpd, self.step
            print(f"test bpd: {self.last_test_bpd:.4f} (best {best_bpd:.4f}, step {step})")
            print(f"best checkpoint: {best}")
            if samples is not None:
                print(f"samples: {samples}")
        return TrainResult(
            run_dir=self.run_dir,
            step=self.step,
            best_bpd=self.best_bpd,
            last_test_bpd=self.last_test_bpd,
            best_ckpt=best if best.exists() else None,
            last_ckpt=self.run_dir / "last.pt",
            skipped_steps=self.skipped_steps,
            interrupted=interrupted,
            model=self.model,
        )


def _holds_a_run(folder: Path) -> bool:
    return (folder / "last.pt").exists() or (folder / "best.pt").exists()


def _new_run_dir(base: Path) -> Path:
    """``base``, or ``base_2``, ``base_3``… : the first that did not exist (created here)."""
    candidate, n = base, 1
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}_{n}")


def _resolve_run_dir(cfg: DictConfig, dist: DistInfo) -> Path:
    """The run folder, decided on rank 0 and shared so every rank uses the same one.

    Never another run's folder: a new run refuses a ``run_dir`` that holds
    checkpoints (unless it is the folder being resumed), and a default
    ``runs/<dataset>/<time>`` that already exists gets a ``_2``, ``_3``… suffix.
    """
    answer: tuple[str | None, str | None] = (None, None)
    if dist.is_main:
        try:
            resumed = Path(cfg.ckpt).resolve().parent if cfg.ckpt is not None else None
            if cfg.run_dir is not None:
                run_dir = Path(cfg.run_dir)
                if run_dir.exists() and not run_dir.is_dir():
                    raise ConfigError(f"run_dir={run_dir} is a file; choose a folder")
                if _holds_a_run(run_dir) and run_dir.resolve() != resumed:
                    raise ConfigError(
                        f"run_dir={run_dir} already holds a run; resume it with "
                        f"ckpt={run_dir / 'last.pt'} or choose another run_dir"
                    )
            elif resumed is not None:
                run_dir = resumed
            else:
                stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
                run_dir = _new_run_dir(Path("runs") / cfg.dataset.name / stamp)
            answer = (str(run_dir), None)
        except ConfigError as err:
            answer = (None, str(err))
    run_dir, error = broadcast_object(answer)
    if error is not None:
        raise ConfigError(error)
    return Path(run_dir)


def _check_training_numbers(tcfg: DictConfig) -> None:
    """Values that would otherwise fail deep inside torch, or silently do nothing."""
    if float(tcfg.lr) <= 0:
        raise ConfigError(f"train.lr must be positive, got {tcfg.lr}")
    for key in ("max_steps", "max_epochs", "init_samples", "max_bad_steps", "log_every"):
        if tcfg[key] is not None and int(tcfg[key]) < 1:
            raise ConfigError(f"train.{key} must be at least 1 (or null), got {tcfg[key]}")
    for key in ("eval_every_steps", "eval_every_epochs", "sample_every", "ckpt_every"):
        if tcfg[key] is not None and int(tcfg[key]) < 1:
            raise ConfigError(f"train.{key} must be at least 1 (or null to turn it off)")
    if tcfg.ema_decay is not None and not 0 < float(tcfg.ema_decay) < 1:
        raise ConfigError(f"train.ema_decay must be in (0, 1) or null, got {tcfg.ema_decay}")
    if tcfg.grad_clip is not None and float(tcfg.grad_clip) <= 0:
        raise ConfigError(f"train.grad_clip must be positive or null, got {tcfg.grad_clip}")
    if int(tcfg.warmup_steps or 0) < 0 or float(tcfg.weight_decay) < 0:
        raise ConfigError("train.warmup_steps and train.weight_decay must not be negative")


def train(
    cfg: DictConfig | dict,
    dist: DistInfo | None = None,
    train_set: Dataset | None = None,
    test_set: Dataset | None = None,
) -> TrainResult:
    """Train a Glow as ``cfg`` describes (the composed ``train.yaml``); see the module doc.

    Resumes from ``cfg.ckpt`` when set (model, optimiser, schedule, EMA, step and
    data position). Under torchrun the process group is set up here. ``train_set``
    and ``test_set`` replace the datasets named in ``cfg.dataset`` (same image shape).
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    own_group = dist is None
    dist = dist or setup_distributed(cfg.device)
    try:
        state = load_checkpoint(cfg.ckpt) if cfg.ckpt is not None else None
        # Settings, data and model first: a bad setting or missing data must not leave
        # an empty run folder behind.
        trainer = Trainer(cfg, dist, None, train_set, test_set)
        run_dir = trainer.run_dir = _resolve_run_dir(cfg, dist)
        trainer.prepare(state, Path(cfg.ckpt) if state is not None else None)
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
            effective = trainer.batch_size * dist.world_size
            start = f"resuming {cfg.ckpt} at step {trainer.step}" if state else "training"
            print(
                f"{start}: {cfg.dataset.name} ({len(trainer.train_set)} train / "
                f"{len(trainer.test_set)} test images), "
                f"{sum(p.numel() for p in trainer.model.parameters()):,} parameters, "
                f"batch {trainer.batch_size} x {dist.world_size} process(es) = {effective}, "
                f"device {dist.device}, {cfg.precision}; run folder {run_dir}"
            )
        return trainer.fit()
    finally:
        if own_group:
            cleanup_distributed()
