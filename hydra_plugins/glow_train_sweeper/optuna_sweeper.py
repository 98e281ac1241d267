"""`hydra/sweeper=digits_search`'s sweeper: Optuna's, with glow-train's exit status.

The glow-train task returns `nan` for a job that stopped with an error or a signal
(one line each, and the sweep goes on). The Optuna sweeper (hydra-optuna-sweeper)
either stops the whole search at such a trial with a traceback, or, when it goes on,
exits 0 as if every trial had run. This subclass hands Optuna each such trial as a
failed one (so that the search goes on up to `max_failure_rate`, 1.0 in
`digits_search`), keeps Optuna's study and `optimization_results.yaml`, and at the end
lists the failed trials and exits with status 1 when there is one, as
`hydra/sweeper=glow` (the default of `glow-train -m`) does.
"""

import sys
from typing import Any, List  # noqa: UP035 (Hydra scans this module unregistered)

from hydra.core.utils import JobReturn, JobStatus

from hydra_plugins.glow_train_sweeper.glow_sweeper import PROG, failed

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # without the sweep extra: nothing to register
    OptunaSweeper = None


class FailedTrial(JobReturn):
    """A job that returned `nan`, as Optuna sees it: a failure that it records (its
    reason was printed when it happened, so nothing more is written here)."""

    @property
    def return_value(self) -> Any:
        raise self._return_value


if OptunaSweeper is not None:

    class GlowOptunaSweeper(OptunaSweeper):
        """`OptunaSweeper` whose exit status says whether a trial failed."""

        def setup(self, **kwargs: Any) -> None:
            super().setup(**kwargs)
            launcher = self.sweeper.launcher
            launch = launcher.launch
            self.failures: list[tuple[int, list[str], str]] = []
            self.trials = 0

            def recorded(job_overrides, initial_job_idx):
                results = launch(job_overrides, initial_job_idx=initial_job_idx)
                for i, ret in enumerate(results, start=initial_job_idx):
                    why = failed(ret)
                    if why is not None:
                        self.failures.append((i, list(ret.overrides or []), why))
                        if ret.status == JobStatus.COMPLETED:  # returned nan: failed for Optuna
                            ret.status, ret._return_value = JobStatus.FAILED, RuntimeError(why)
                            ret.__class__ = FailedTrial
                self.trials += len(results)
                return results

            launcher.launch = recorded

        def sweep(self, arguments: List[str]) -> None:  # noqa: UP006
            try:
                self.sweeper.sweep(arguments)
            except ValueError:  # Optuna has no completed trial to call best: all failed
                if not self.failures:
                    raise
            if self.failures:
                print(
                    f"{PROG}: {len(self.failures)} of {self.trials} trials failed:", file=sys.stderr
                )
                for i, overrides, why in self.failures:
                    print(f"  job {i} ({' '.join(overrides)}): {why}", file=sys.stderr)
                sys.exit(1)
