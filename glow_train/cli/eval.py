"""``glow-eval``: a checkpoint's figure on a split (:func:`glow_train.evaluation.figures.evaluate`),
with ``ood=`` its out-of-distribution AUROCs (:func:`glow_train.evaluation.ood.evaluate_ood`), or
with ``backtest=`` a registered backtest (:func:`glow_train.series.registry.run_backtest`),
printed."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from glow_train.cli.common import (
    CONFIG_PATH,
    plain,
    report,
    require_ckpt,
    say_precision,
    say_which,
)
from glow_train.errors import ConfigError

if TYPE_CHECKING:
    from glow_train.evaluation.figures import EvalReport

__all__ = ["app", "print_report", "print_ood"]

#: how a class prior p(y) is named in the printed lines
PRIOR_TEXT = {"uniform": "uniform", "train": "the training split's class frequencies"}


def print_report(report: EvalReport) -> None:
    """``eval.json``'s path, the per-item CSV's, the figure (and the marginal's); on
    stderr, a note when ``n_bits=`` scored another bit depth than the model's."""
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
    if summary.get("stderr_items") is not None:
        items = "images" if summary["metric"] == "bpd" else "items"
        print(f"standard error over {summary['num_items']} {items}: {summary['stderr_items']:.2g}")
    value = summary[summary["metric"]]
    if summary["metric"] == "bpd":
        given = " (of p(x|y): class-conditional)" if summary.get("conditional") else ""
        print(f"{summary['split']} bpd: {value:.4f}{given}")
    else:  # continuous data: a negative log-likelihood per dimension
        of = f" (density of the {summary['density_of']})" if summary.get("density_of") else ""
        print(f"{summary['split']} nll: {value:.4f} {unit}{of}")
    if report.marginal is not None:
        marginal = summary[f"{summary['metric']}_marginal"]
        print(
            f"{summary['split']} {unit} of p(x) = sum_y p(y) p(x|y): {marginal:.4f} "
            f"(p(y) {PRIOR_TEXT[summary['class_prior']]})"
        )


def print_ood(s: dict[str, Any]) -> None:
    """Both sets' figures and the AUROCs."""
    inside, outside = s["in_distribution"], s["out_of_distribution"]
    print(f"eval: {s['json_path']}")
    if "class_prior" in s:
        print(
            "class-conditional: scored by p(x) = sum_y p(y) p(x|y), "
            f"p(y) {PRIOR_TEXT[s['class_prior']]}"
        )
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


@hydra.main(config_path=CONFIG_PATH, config_name="eval", version_base="1.3")
def app(cfg: DictConfig) -> None:
    from glow_train.evaluation.figures import evaluate  # PyTorch on use
    from glow_train.evaluation.ood import evaluate_ood

    def run():
        # dataset=<name> composes that group's config (with any dataset.* overrides in
        # it); without it, dataset.* keys that are set replace the checkpoint's values.
        dataset = plain(cfg.dataset)
        chosen = HydraConfig.get().runtime.choices.get("dataset") is not None
        ckpt = require_ckpt(cfg, "glow-eval")
        if cfg.backtest is not None:  # series models with a context
            from glow_train.series.registry import run_backtest

            options = {k: plain(v) for k, v in cfg.items() if k not in ("ckpt", "backtest")}
            for line in run_backtest(cfg.backtest, ckpt, options).lines():
                print(line)
            say_which(cfg, ckpt, "glow-eval")
            return
        common = dict(
            split=cfg.split,
            draws=cfg.draws,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            out=cfg.out,
            overwrite=cfg.overwrite,
            device=str(cfg.device),
            ema=cfg.ema,
            progress=cfg.progress,
            class_prior=cfg.class_prior,
            precision=cfg.precision,
        )
        if cfg.ood is not None:
            if chosen or cfg.n_bits is not None:
                raise ConfigError(
                    "ood= scores the checkpoint's own data against the other images: "
                    "dataset=<name> and n_bits= do not apply (dataset.<key>= still does)"
                )
            summary = evaluate_ood(
                ckpt,
                cfg.ood,
                dataset_overrides=dataset,
                train_images=cfg.ood_train_images,
                **common,
            )
            say_which(cfg, ckpt, "glow-eval")
            say_precision(cfg, "glow-eval")
            print_ood(summary)
            return
        result = evaluate(
            ckpt,
            dataset={k: v for k, v in dataset.items() if v is not None} if chosen else None,
            dataset_overrides=None if chosen else dataset,
            n_bits=cfg.n_bits,
            per_image=cfg.per_image,
            **common,
        )
        say_which(cfg, ckpt, "glow-eval")
        say_precision(cfg, "glow-eval")
        print_report(result)

    report("glow-eval", run)
