"""`hydra/sweeper=glow`: Hydra's basic sweeper that survives bad jobs.

Hydra's own basic sweeper composes every job's config before it launches any, and one
job whose overrides do not compose (`train.lr=1e-3,abc`) ends the whole sweep with a
multi-line report; a job whose task fails ends it too. This sweeper, the default of
`glow-train -m`:

- composes each job first; a job that does not compose gets one line
  (`glow-train: job 1 (train.lr=abc): <why>`), counts as failed (nan) and is not
  launched, so it leaves no job folder;
- launches the others through the configured launcher (the basic one, submitit, ...),
  each keeping its place number (its folder `<sweep dir>/<n>`);
- counts a job as failed when the task raised, or returned `nan` (the glow-train task
  returns `nan` for a job that stopped with an error or a signal);
- at the end lists the failed jobs and exits with status 1 when there is one.
"""

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional  # noqa: UP035

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

PROG = "glow-train"


@dataclass
class GlowSweeperConf:
    _target_: str = "hydra_plugins.glow_train_sweeper.glow_sweeper.GlowSweeper"
    max_batch_size: Optional[int] = None  # noqa: UP045 (Hydra scans this module unregistered)
    params: Optional[Dict[str, str]] = None  # noqa: UP006, UP045


ConfigStore.instance().store(group="hydra/sweeper", name="glow", node=GlowSweeperConf)


def one_line(err: BaseException) -> str:
    """A composition error (Hydra's are several lines with a cause) as one line."""
    text = str(err).split("\nConfig search path")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = (lines[0] if lines else type(err).__name__).rstrip(".")
    first = first.removeprefix("Error merging override ")
    cause = err.__cause__
    if cause is not None and str(cause).strip():
        return f"{first}: {str(cause).splitlines()[0]}"
    return first


def failed(ret: JobReturn) -> str | None:
    """Why a launched job failed, or `None` when it returned a finite figure (or
    nothing, as a task without an objective does)."""
    if ret.status != JobStatus.COMPLETED:
        err = ret._return_value
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
    value = ret._return_value
    if isinstance(value, float) and math.isnan(value):
        return "returned nan (an error or a signal stopped it; its lines above say which)"
    return None


class GlowSweeper(BasicSweeper):
    """`BasicSweeper` that composes, launches and reports each job on its own."""

    def __init__(self, max_batch_size: int | None = None, params: Any = None) -> None:
        super().__init__(
            max_batch_size=max_batch_size,
            params=OmegaConf.to_container(params) if OmegaConf.is_config(params) else params,
        )

    def _composes(self, overrides: list[str]) -> str | None:
        """`None` when the job's config composes, else why not (one line)."""
        try:
            self.hydra_context.config_loader.load_sweep_config(
                master_config=self.config, sweep_overrides=list(overrides)
            )
        except (HydraException, OmegaConfBaseException, ValueError) as err:
            return one_line(err)
        return None

    def validate_batch_is_legal(self, batch) -> None:
        """Each job is composed on its own in `launch_valid`."""

    def _shown(self, overrides) -> str:
        """A job's overrides as shown: those that differ between the jobs (the swept
        values), all of them when the sweep has one job."""
        varying = [o for o in overrides if o not in self._common]
        return " ".join(varying or overrides)

    def launch_valid(self, batch, first: int) -> tuple[list[JobReturn], dict[int, tuple]]:
        """Launch the jobs of `batch` that compose, in runs of consecutive ones so
        that each keeps its number; return their results and the failures by number."""
        failures: dict[int, tuple] = {}
        results: list[JobReturn] = []
        run: list[list[str]] = []
        start = first
        for i, overrides in enumerate(batch, start=first):
            why = self._composes(list(overrides))
            if why is None:
                run.append(list(overrides))
                continue
            print(f"{PROG}: job {i} ({self._shown(overrides)}): {why}", file=sys.stderr)
            failures[i] = (overrides, why)
            if run:
                results += self.launcher.launch(run, initial_job_idx=start)
            run, start = [], i + 1
        if run:
            results += self.launcher.launch(run, initial_job_idx=start)
        return results, failures

    def sweep(self, arguments: list[str]) -> Any:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = self._parse_config()
        params.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        self.overrides = self.split_arguments(parser.parse_overrides(params), self.max_batch_size)
        jobs = [list(job) for batch in self.overrides for job in batch]
        self._common = set.intersection(*map(set, jobs)) if len(jobs) > 1 else set()
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        returns, failures, first, total = [], {}, 0, 0
        while not self.is_done():
            batch = self.get_job_batch()
            results, bad = self.launch_valid(batch, first)
            failures.update(bad)
            numbered = [i for i in range(first, first + len(batch)) if i not in bad]
            for i, ret in zip(numbered, results, strict=True):
                why = failed(ret)
                if why is not None:
                    failures[i] = (ret.overrides or [], why)
            first += len(batch)
            total += len(batch)
            returns.append(results)
        if failures:
            print(f"{PROG}: {len(failures)} of {total} jobs failed:", file=sys.stderr)
            for i, (overrides, why) in sorted(failures.items()):
                print(f"  job {i} ({self._shown(overrides)}): {why}", file=sys.stderr)
            sys.exit(1)
        return returns
