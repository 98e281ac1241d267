"""SIGINT/SIGTERM (and the scheduler's pre-emption signal) during training: finish the
step, save `last.pt`, then stop at once (no final evaluation or samples: a scheduler's
grace period is short; the figures come from the resumed run or from `glow-eval`).
`glow-train` then exits 130 (`SIGINT`) or 143 (`SIGTERM`), or 0 after the pre-emption
signal (see `exit_status`)."""

from __future__ import annotations

import signal
from typing import Any

from tqdm import tqdm

from glow_train.errors import ConfigError

__all__ = ["Interrupt", "exit_status", "preempt_signal"]


def exit_status(name: str | None, preempted: bool) -> int:
    """The exit status of a run stopped by a signal, once `last.pt` is saved.

    The shell's convention, $128 + n$ for signal $n$: 130 after `SIGINT`, 143 after
    `SIGTERM`, so that `glow-train && glow-eval` stops there. The pre-emption signal
    (`train.preempt_signal`) keeps the requeue path's own convention: 0, because the
    job is requeued (by submitit's handler, or by the scheduler), not failed; the
    requeued job continues with `ckpt=auto`.

    Args:
        name: the signal that stopped the run (`"SIGINT"`, ...); `None` when another
            process of the run received it (torchrun): counted as `SIGTERM`.
        preempted: whether that signal was `train.preempt_signal`.

    Returns:
        The exit status the command ends with.
    """
    if preempted:
        return 0
    return 128 + int(signal.Signals[name or "SIGTERM"])


def preempt_signal(name: str | None) -> int | None:
    """`train.preempt_signal` (`SIGUSR2`, `USR1`, ...) as a signal number (`None`: off)."""
    if name is None:
        return None
    text = str(name).upper()
    text = text if text.startswith("SIG") else f"SIG{text}"
    if text not in signal.Signals.__members__ or text in ("SIGKILL", "SIGSTOP"):
        raise ConfigError(
            f"train.preempt_signal={name!r} is not a signal that can be caught; use e.g. SIGUSR2"
        )
    return int(signal.Signals[text])


class Interrupt:
    """SIGINT/SIGTERM or `preempt` -> stop at the next step boundary; a second SIGINT
    aborts at once. `received` names the first signal.

    Use as a context manager around the loop; `requested` turns true on the first
    signal. Outside the main thread signals are left alone. When the pre-emption
    signal stopped the run and a Python handler was installed before ours (submitit's,
    which requeues the job), `hand_on` calls it (the loop does, once `last.pt`
    is written; else on exit).
    """

    def __init__(self, verbose: bool, preempt: int | None = None):
        self.requested = False
        self.verbose = verbose
        self.preempt = preempt
        self.preempted: tuple[int, Any] | None = None
        self.received: str | None = None  # the name of the first signal (SIGTERM, ...)
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        first = not self.requested
        self.requested = True
        if first:
            self.received = signal.Signals(signum).name
        if signum == self.preempt:
            self.preempted = (signum, frame)
        if self.verbose:
            again = " (Ctrl-C again to abort)" if signum == signal.SIGINT else ""
            tqdm.write(
                f"{signal.Signals(signum).name} received: saving last.pt at the end of this "
                f"step, then stopping{again}"
            )

    def __enter__(self):
        signals = [signal.SIGINT, signal.SIGTERM]
        if self.preempt is not None and self.preempt not in signals:
            signals.append(self.preempt)
        for sig in signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def hand_on(self) -> None:
        """Restore the previous handlers and, after a pre-emption signal, call the
        previous Python handler with it (submitit's requeues the job): call it once the
        checkpoint is written."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        preempted, self.preempted = self.preempted, None
        if preempted is not None:
            handler = self._previous.get(preempted[0])
            if callable(handler):
                handler(*preempted)

    def __exit__(self, *exc):
        if exc[0] is not None:
            self.preempted = None  # an error: nothing was saved to resume from
        self.hand_on()
