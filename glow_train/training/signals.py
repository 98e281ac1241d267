"""SIGINT/SIGTERM during training: finish the step, save, then stop."""

from __future__ import annotations

import signal
from typing import Any

from tqdm import tqdm

__all__ = ["Interrupt"]


class Interrupt:
    """SIGINT/SIGTERM -> stop at the next step boundary; a second SIGINT aborts at once.

    Use as a context manager around the loop; ``requested`` turns true on the first
    signal. Outside the main thread signals are left alone.
    """

    def __init__(self, verbose: bool):
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
