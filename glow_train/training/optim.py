"""One optimiser step of the objective: scaling, clipping, agreeing across ranks, EMA.

Everything the step changes lives here (optimiser, learning-rate schedule,
GradScaler, EMA); the trainer decides what to feed it and when to stop.

Two ways to take a step, with the same result:

- **deferred** (fused Adam without a GradScaler: the default on CPU and CUDA). The
  step never waits for its own result. Whether the loss or gradient was finite is
  a flag on the device that fused Adam and the EMA obey there (a skipped step
  changes nothing); the flags, the loss and the gradient norm are copied to the
  host without blocking and read at the next step, after its backward pass has
  been queued, when the device has long finished them. The schedule, the counters
  and the stop flags (signal, time limit) therefore lag one step: the outcome of
  step `t` is known during step `t+1`, and `Optimization.flush` settles
  the last one before anything reads the state (evaluation, checkpoints, the end).
  The learning rate of step `t+1` still counts every good step before it.
- **immediate** (Adamax, or fp16 with its GradScaler): one host synchronisation per
  step reads the flags before the update.

The deferred step makes no other host synchronisation either: with one process the
stop flags (signal, time limit) stay on the host; with several they travel to the
device from pinned memory without blocking, for the all-reduce. The EMA's weight is a
tensor on the device (`_foreach_mul_` by a tensor, not `_foreach_lerp_` by a number,
which would read it with `.item()`), and its counter `n_averaged` lives there too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from glow_train.runtime.distributed import all_reduce_max, process_count
from glow_train.training.schedule import lr_factor

__all__ = ["Optimization", "StepOutcome", "make_optimizer"]


def make_optimizer(
    params: list[torch.Tensor],
    name: str,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    device_type: str,
) -> torch.optim.Optimizer:
    """`train.optimizer` (`adam`, `adamw` or `adamax`) with its fastest implementation.

    Adam's fused kernel (CPU and CUDA) updates every tensor in one pass: on the
    2-core machine its step took 6 ms instead of 22 ms for a CIFAR-shaped K=8
    model. Adamax has none; it gets the multi-tensor path. A resumed run keeps the
    implementation its checkpoint was written with (it is in the saved groups).
    """
    if name in ("adam", "adamw"):  # adamw: decoupled weight decay (Loshchilov & Hutter)
        opt_cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        fast = {"fused": device_type in ("cpu", "cuda")}
    else:
        opt_cls, fast = torch.optim.Adamax, {"foreach": True}
    return opt_cls(params, lr=lr, betas=betas, weight_decay=weight_decay, **fast)


@dataclass
class StepOutcome:
    """What one step did, agreed by every rank (the flags are all-reduced)."""

    loss: float  # this rank's loss
    grad_norm: float  # this rank's gradient norm before clipping
    skipped: bool  # a non-finite loss or gradient: nothing changed
    overflow: bool  # fp16: the GradScaler skipped the update and lowered its scale
    signalled: bool  # a signal arrived on some rank
    time_up: bool  # the time limit passed on some rank


class Optimization:
    """The optimiser, schedule, GradScaler and EMA of one module (the objective).

    Args:
        module: what is trained; every parameter that requires a gradient is optimised.
        tcfg: `train.*` (optimizer, lr, betas, weight_decay, warm-up and schedule,
            grad_clip, ema_decay).
        steps_per_epoch: for the schedule's length under `train.max_epochs`.
        device_type: `"cpu"` or `"cuda"`.
        fp16: whether the step runs under float16 autocast (enables the GradScaler).
    """

    def __init__(
        self,
        module: nn.Module,
        tcfg: DictConfig,
        steps_per_epoch: int,
        device_type: str,
        fp16: bool,
    ):
        self.optimizer = make_optimizer(
            [p for p in module.parameters() if p.requires_grad],
            tcfg.optimizer,
            lr=float(tcfg.lr),
            betas=tuple(tcfg.betas),
            weight_decay=float(tcfg.weight_decay),
            device_type=device_type,
        )
        #: the clock's estimate of the final step (see glow_train.training.schedule);
        #: None: the step limit is the horizon
        self.horizon: int | None = None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(tcfg, steps_per_epoch, step, self.horizon)
        )
        self.scaler = torch.amp.GradScaler(device_type, enabled=fp16)
        self.grad_clip = tcfg.grad_clip
        self.ema_decay = tcfg.ema_decay
        self.ema: AveragedModel | None = None
        self._pending: tuple[torch.Tensor, Any] | None = None
        self._param_lists: dict[int, tuple[nn.Module, list[torch.Tensor]]] = {}

    def _parameters(self, module: nn.Module) -> list[torch.Tensor]:
        """`list(module.parameters())`, walked once per module: the walk over some
        200 submodules cost more than the clipping and EMA arithmetic of a small model.
        Parameters are updated in place (optimiser, `load_state_dict`), never replaced."""
        known = self._param_lists.get(id(module))
        if known is None or known[0] is not module:
            known = (module, list(module.parameters()))
            self._param_lists[id(module)] = known
        return known[1]

    def make_ema(self, module: nn.Module) -> None:
        """Start the EMA from `module`'s current weights (when `train.ema_decay` is set)."""
        if self.ema_decay is not None:
            device = next(module.parameters()).device  # n_averaged beside the weights
            self.ema = AveragedModel(
                module,
                device=device,
                multi_avg_fn=get_ema_multi_avg_fn(float(self.ema_decay)),
                use_buffers=False,
            )

    @property
    def deferred(self) -> bool:
        """Fused Adam without a GradScaler: it skips an update itself when told so on
        the device (`found_inf`). Read from the groups, which a resumed run takes
        from its checkpoint."""
        groups = self.optimizer.param_groups
        return bool(groups[0].get("fused")) and not self.scaler.is_enabled()

    @property
    def lr(self) -> float:
        """The current learning rate (of the first parameter group)."""
        return self.optimizer.param_groups[0]["lr"]

    def step(
        self, module: nn.Module, loss: torch.Tensor, signalled: bool, time_up: bool
    ) -> StepOutcome | None:
        """Back-propagate `loss` and update `module`, unless anything is non-finite.

        A skipped step changes no weight, optimiser moment, EMA average or schedule.
        With fp16, a gradient overflow at a finite loss is the GradScaler's business:
        it skips the update and lowers its scale. Ranks agree on all of this, and on
        stopping (a signal or the time limit on any rank), through one all-reduce.

        Returns the outcome of the step that became known: this one (immediate), or
        the previous one (deferred; `None` when there is none).
        """
        if self.deferred:
            return self._deferred_step(module, loss, signalled, time_up)
        flags, figures, stop = self._flags(module, loss, signalled, time_up)
        # one host synchronisation for the whole step: the agreed flags and this
        # rank's loss and gradient norm come back together
        values = torch.cat([flags, figures]).tolist()
        outcome = _outcome(values, stop)
        loss_bad, grad_bad = bool(values[0]), bool(values[1])
        # a finite loss whose gradient overflowed is the GradScaler's business
        overflow = grad_bad and not loss_bad and self.scaler.is_enabled()
        outcome.skipped, outcome.overflow = (loss_bad or grad_bad) and not overflow, overflow
        if outcome.skipped:
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
        else:
            self.scaler.step(self.optimizer)  # skips the update itself on an overflow
            self.scaler.update()
            if not overflow:
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update_parameters(module)
        return outcome

    def _flags(
        self, module, loss, signalled, time_up
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[bool, bool] | None]:
        """Back-propagate (scaled under fp16), unscale and clip.

        Returns:
            The agreed flags on the device (loss and gradient not finite; with several
            processes also the signal and time-limit flags of any rank), this rank's
            loss and gradient norm, and with one process the stop flags as they are
            on the host (`None` when they are among the agreed flags). Without a
            GradScaler the scaling is the identity.
        """
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        clip = self.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self._parameters(module), float(clip) if clip is not None else float("inf")
        )
        bad = torch.stack(
            [(~torch.isfinite(loss.detach())).float(), (~torch.isfinite(grad_norm)).float()]
        )
        figures = torch.stack([loss.detach().float(), grad_norm.float()])
        if process_count() == 1:  # nothing to agree on: the stop flags stay on the host
            return bad, figures, (signalled, time_up)
        # from pinned host memory without blocking (a plain torch.tensor(..., device=cuda)
        # would wait for the copy)
        host = torch.tensor([float(signalled), float(time_up)], pin_memory=loss.is_cuda)
        stop = host.to(loss.device, non_blocking=True)
        return all_reduce_max(torch.cat([bad, stop])), figures, None

    def _deferred_step(self, module, loss, signalled, time_up) -> StepOutcome | None:
        flags, figures, stop = self._flags(module, loss, signalled, time_up)
        bad = flags[:2].amax()  # 1.0: skip this update (every rank agrees)
        previous = self.flush()  # the schedule now counts every good step before this one
        self.optimizer.found_inf = bad
        try:
            self.optimizer.step()
        finally:
            del self.optimizer.found_inf
        if self.ema is not None:
            self._masked_ema_update(module, 1.0 - bad)
        values = torch.cat([flags, figures])
        if values.is_cuda:  # to pinned host memory, without waiting for it
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending = (host, event, stop)
        else:
            self._pending = (values, None, stop)
        return previous

    @torch.no_grad()
    def _masked_ema_update(self, module: nn.Module, good: torch.Tensor) -> None:
        """`AveragedModel.update_parameters` (copy at the first update, then
        `ema += (1 - decay)(p - ema)`), applied only where `good` is 1, on the device."""
        ema = self.ema
        first = (ema.n_averaged == 0).float()
        weight = (first + (1.0 - first) * (1.0 - float(self.ema_decay))) * good
        averaged = self._parameters(ema.module)
        # ema += weight * (p - ema), the weight read on the device (no .item())
        step = torch._foreach_sub(self._parameters(module), averaged)
        torch._foreach_mul_(step, weight)
        torch._foreach_add_(averaged, step)
        ema.n_averaged += good.long()

    def flush(self) -> StepOutcome | None:
        """Settle the deferred step, if one is pending: read its flags (waiting for the
        device only if it has not finished them) and advance the schedule if it was good."""
        if self._pending is None:
            return None
        values, event, stop = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()
        outcome = _outcome(values.tolist(), stop)
        if not outcome.skipped:
            self.scheduler.step()
        return outcome


def _outcome(values: list[float], stop: tuple[bool, bool] | None) -> StepOutcome:
    """The outcome read from `[loss_bad, grad_bad, (signalled, time_up,) loss, grad_norm]`
    (the stop flags from `stop` when they stayed on the host)."""
    signalled, time_up = stop if stop is not None else (bool(values[2]), bool(values[3]))
    skipped = bool(values[0]) or bool(values[1])
    return StepOutcome(values[-2], values[-1], skipped, False, signalled, time_up)
