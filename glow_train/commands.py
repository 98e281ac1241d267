"""The three Hydra apps: turn a composed config into plain arguments and call the library.

``glow-train`` -> :func:`glow_train.training.train`; ``glow-sample`` and ``glow-eval``
-> :mod:`glow_train.sample` / :mod:`glow_train.evaluate`. Errors the user can fix
(:class:`glow_train.errors.GlowError`, and a command line the typed configs refuse)
print one line and exit with status 2. The console scripts' entry points are in
:mod:`glow_train.cli`; the command line is checked first by
:mod:`glow_train.command_line`. This module imports only Hydra and OmegaConf at the top
(PyTorch inside the apps), so ``--help`` and ``--cfg`` answer without loading PyTorch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from glow_train.command_line import CONFIG_PATH, GROUPS, check_command_line
from glow_train.errors import CheckpointError, ConfigError, GlowError

__all__ = ["APPS", "check_command_line"]


def _report(prog: str, fn: Callable[[], object], exit_on_error: bool = True) -> bool:
    """Run ``fn``; a user-fixable error is one line and exit status 2, or with
    ``exit_on_error=False`` (one job of a sweep) one line and ``False``. (Ctrl-C is
    handled once, in :mod:`glow_train.cli`, around the imports and the whole run.)"""
    try:
        fn()
        return True
    except GlowError as err:
        message = str(err)
    except OSError as err:  # e.g. an output path under a file, a read-only folder
        message = f"{err.strerror or err}" + (f": {err.filename}" if err.filename else "")
    print(f"{prog}: error: {message}", file=sys.stderr)
    if exit_on_error:
        sys.exit(2)
    return False


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
def _train_app(cfg: DictConfig) -> float | None:
    from hydra.types import RunMode

    from glow_train.cluster import export_torch_env
    from glow_train.runtime import keep_freed_memory
    from glow_train.training import train
    from glow_train.training.resume import (
        auto_resume,
        finished_run,
        resume_config,
        sweep_objective,
    )

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    returned: list[float | None] = [None]
    keep_freed_memory()  # again: a submitit task runs this function without the console script
    export_torch_env()  # a submitit / srun task knows its rank from here on
    main = int(os.environ.get("RANK", "0")) == 0

    def run():
        config = cfg
        if multirun and main:
            print(f"job {hydra_cfg.job.num}: {' '.join(hydra_cfg.overrides.task)}")
        if multirun and cfg.run_dir is None:  # the job's own folder: multirun/<date>/<time>/<n>
            folder = Path(hydra_cfg.runtime.output_dir)
            if folder.is_relative_to(Path.cwd()):  # as the user named it: multirun/...
                folder = folder.relative_to(Path.cwd())
            with open_dict(config):
                config.run_dir = str(folder)
        if cfg.ckpt == "auto":
            config = auto_resume(config)
            done = finished_run(config) if config.ckpt is not None else None
            if done is not None:  # a requeued job that had already finished: not an error
                if main:
                    print(done[0])
                returned[0] = done[1]
                return
        elif cfg.ckpt is not None:
            config = resume_config(cfg, list(hydra_cfg.overrides.task), GROUPS)
        returned[0] = sweep_objective(train(config), multirun and main)

    if _report("glow-train", run, exit_on_error=not multirun):
        return returned[0]
    # one failed job of a sweep: the sweeper records it as failed (nan) and goes on; the
    # job folder Hydra made for it goes too if the job left nothing in it
    folder = Path(hydra_cfg.runtime.output_dir)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    print(f"job {hydra_cfg.job.num} failed; the sweep goes on", file=sys.stderr)
    return float("nan")


def _plain(value: object) -> object:
    """OmegaConf containers -> plain lists and dicts; everything else unchanged."""
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _require_ckpt(cfg: DictConfig, prog: str) -> str:
    """The checkpoint file ``ckpt=`` names: for a run folder, its ``best.pt`` (else
    ``last.pt``), which :func:`_say_which` reports once the command succeeded."""
    from glow_train.checkpoint import resolve_checkpoint

    if cfg.ckpt is None:
        raise CheckpointError(f"no checkpoint given; run {prog} ckpt=runs/<dataset>/<time>/best.pt")
    return str(resolve_checkpoint(cfg.ckpt, ("best.pt", "last.pt")))


def _say_precision(cfg: DictConfig, prog: str) -> None:
    """On stderr, once the command succeeded (an error stays one line), the precision
    ``precision=`` resolved to on ``device=``, e.g. ``glow-sample: precision auto -> bf16
    (CPU has native bf16)``; nothing for an explicit fp32 (glow-eval's default)."""
    if cfg.precision == "fp32":
        return
    from glow_train.distributed import resolve_device
    from glow_train.precision import INFERENCE_PRECISIONS, resolve_precision

    device = resolve_device(str(cfg.device))
    chosen = resolve_precision(str(cfg.precision), device, INFERENCE_PRECISIONS)
    print(f"{prog}: {chosen.describe()}", file=sys.stderr)


def _say_which(cfg: DictConfig, used: str, prog: str) -> None:
    """On stderr, which checkpoint of a run folder was used (stdout stays the results)."""
    if used != str(cfg.ckpt):
        print(f"{prog}: used {used}", file=sys.stderr)


@hydra.main(config_path=CONFIG_PATH, config_name="sample", version_base="1.3")
def _sample_app(cfg: DictConfig) -> None:
    from glow_train.sample import sample

    def run():
        ckpt = _require_ckpt(cfg, "glow-sample")
        if cfg.mode == "forecast":  # series models with a context
            from glow_train.series_commands import forecast_command

            forecast_command(cfg, ckpt)
            _say_which(cfg, ckpt, "glow-sample")
            return
        if cfg.mode != "sample":
            _latent_mode(cfg, ckpt)
            return
        paths = sample(
            ckpt,
            _plain(cfg.temperature),
            n=cfg.n,
            nrow=cfg.nrow,
            padding=cfg.padding,
            layout=cfg.layout,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            out=cfg.out,
            overwrite=cfg.overwrite,
            device=str(cfg.device),
            ema=cfg.ema,
            precision=cfg.precision,
            start_price=cfg.start_price,
            y=_plain(cfg.y),
        )
        for path in paths:
            print(path)
        _say_which(cfg, ckpt, "glow-sample")
        _say_precision(cfg, "glow-sample")

    _report("glow-sample", run)


def _latent_mode(cfg: DictConfig, ckpt: str) -> None:
    """glow-sample mode=interpolate|direction|manipulate (:mod:`glow_train.latent_modes`)."""
    from pathlib import Path

    from glow_train.distributed import resolve_device
    from glow_train.latent_modes import (
        MODES,
        interpolate_strip,
        manipulate_strip,
        save_direction,
    )

    if cfg.mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    path, device = Path(ckpt), resolve_device(str(cfg.device))
    common = dict(device=device, ema=cfg.ema)
    written = dict(out=cfg.out, overwrite=cfg.overwrite)
    if cfg.mode == "interpolate":
        strip = dict(steps=cfg.steps, interp=cfg.interp, y=cfg.y, padding=cfg.padding, **written)
        print(interpolate_strip(path, _plain(cfg.a), _plain(cfg.b), **strip, **common))
    elif cfg.mode == "direction":
        out, found = save_direction(
            path,
            _plain(cfg.attribute),
            max_images=cfg.max_images,
            batch_size=cfg.batch_size,
            **common,
        )
        print(out)
        print(
            f"direction of {found['attribute']}: mean latent of {found['count_with']} images "
            f"with it minus {found['count_without']} without"
        )
    else:
        strip = dict(alpha=_plain(cfg.alpha), y=cfg.y, padding=cfg.padding, **written)
        print(manipulate_strip(path, _plain(cfg.attribute), _plain(cfg.image), **strip, **common))
    _say_which(cfg, ckpt, "glow-sample")


@hydra.main(config_path=CONFIG_PATH, config_name="eval", version_base="1.3")
def _eval_app(cfg: DictConfig) -> None:
    from glow_train.evaluate import evaluate

    def run():
        # dataset=<name> composes that group's config (with any dataset.* overrides in
        # it); without it, dataset.* keys that are set replace the checkpoint's values.
        dataset = _plain(cfg.dataset)
        chosen = HydraConfig.get().runtime.choices.get("dataset") is not None
        ckpt = _require_ckpt(cfg, "glow-eval")
        if cfg.backtest is not None:  # series models with a context
            from glow_train.series_commands import backtest_command

            backtest_command(cfg, ckpt)
            _say_which(cfg, ckpt, "glow-eval")
            return
        if cfg.ood is not None:
            if chosen or cfg.n_bits is not None:
                raise ConfigError(
                    "ood= scores the checkpoint's own data against the other images: "
                    "dataset=<name> and n_bits= do not apply (dataset.<key>= still does)"
                )
            _ood(cfg, ckpt, dataset)
            return
        report = evaluate(
            ckpt,
            split=cfg.split,
            dataset={k: v for k, v in dataset.items() if v is not None} if chosen else None,
            dataset_overrides=None if chosen else dataset,
            draws=cfg.draws,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            n_bits=cfg.n_bits,
            per_image=cfg.per_image,
            out=cfg.out,
            overwrite=cfg.overwrite,
            device=str(cfg.device),
            ema=cfg.ema,
            progress=cfg.progress,
            precision=cfg.precision,
        )
        _say_which(cfg, ckpt, "glow-eval")
        _say_precision(cfg, "glow-eval")
        summary, unit = report.summary, report.summary["unit"]
        if summary.get("n_bits") != summary.get("model_n_bits"):
            print(
                f"glow-eval: note: the model was trained on {summary['model_n_bits']}-bit "
                f"images; n_bits={summary['n_bits']} scores it on {summary['n_bits']}-bit ones, "
                "so the figure is not comparable with its training figures",
                file=sys.stderr,
            )
        print(f"eval: {report.json_path}")
        if report.csv_path is not None:
            item = "image" if summary["metric"] == "bpd" else "item"
            print(f"per-{item} {unit}: {report.csv_path}")
        if summary["stderr"] is not None:
            print(f"standard error over {summary['draws']} draws: {summary['stderr']:.2g}")
        value = summary[summary["metric"]]
        if summary["metric"] == "bpd":
            given = " (of p(x|y): class-conditional)" if summary.get("conditional") else ""
            print(f"{summary['split']} bpd: {value:.4f}{given}")
        else:  # continuous data: a negative log-likelihood per dimension
            of = f" (density of the {summary['density_of']})" if summary.get("density_of") else ""
            print(f"{summary['split']} nll: {value:.4f} {unit}{of}")

    _report("glow-eval", run)


def _ood(cfg: DictConfig, ckpt: str, overrides: dict) -> None:
    """glow-eval ood=...: both sets' figures and the AUROCs (:mod:`glow_train.ood`)."""
    from glow_train.ood import evaluate_ood

    s = evaluate_ood(
        ckpt,
        cfg.ood,
        dataset_overrides=overrides,
        draws=cfg.draws,
        split=cfg.split,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        train_images=cfg.ood_train_images,
        out=cfg.out,
        overwrite=cfg.overwrite,
        device=str(cfg.device),
        ema=cfg.ema,
        progress=cfg.progress,
        precision=cfg.precision,
    )
    _say_which(cfg, ckpt, "glow-eval")
    _say_precision(cfg, "glow-eval")
    inside, outside = s["in_distribution"], s["out_of_distribution"]
    print(f"eval: {s['json_path']}")
    print(
        f"in-distribution ({inside['dataset']} {inside['split']}): {s['bpd_in']:.4f} bpd, "
        f"{s['num_in']} images"
    )
    print(
        f"out-of-distribution ({outside['source']}): {s['bpd_ood']:.4f} bpd, {s['num_ood']} images"
    )
    print(
        f"AUROC by bpd: {s['auroc_bpd']:.4f}; by typicality (|bpd - {s['train_bpd_mean']:.4f}|, "
        f"the mean of {s['train_images']} training images): {s['auroc_typicality']:.4f}"
    )


#: config name -> its Hydra app
APPS = {"train": _train_app, "sample": _sample_app, "eval": _eval_app}
