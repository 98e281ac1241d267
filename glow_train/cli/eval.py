"""`glow-eval`: a checkpoint's figure on a split (`glow_train.evaluation.figures.evaluate`),
with `ood=` its out-of-distribution AUROCs (`glow_train.evaluation.ood.evaluate_ood`), or
with `backtest=` a registered backtest (`glow_train.series.registry.run_backtest`), each
given the composed config as its options (an option set on the command line that it
does not use is refused), printed."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig

from glow_train.cli.common import (
    CONFIG_PATH,
    report,
    require_ckpt,
    say_precision,
    say_which,
    typed_options,
)

if TYPE_CHECKING:
    from glow_train.evaluation.figures import EvalReport

__all__ = ["app", "print_report", "print_ood"]

#: how a class prior p(y) is named in the printed lines
PRIOR_TEXT = {"uniform": "uniform", "train": "the training split's class frequencies"}


def print_report(report: EvalReport) -> None:
    """`eval.json`'s path, the per-item CSV's, the figure (and the marginal's); on
    stderr, a note when `n_bits=` scored another bit depth than the model's."""
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
    """`glow-eval`: score `cfg.ckpt` (or its OOD AUROCs, or a backtest); print the figures."""
    from glow_train.evaluation.figures import evaluate  # PyTorch on use
    from glow_train.evaluation.ood import evaluate_ood
    from glow_train.modes import refuse_unused

    def run():
        ckpt = require_ckpt(cfg, "glow-eval")
        if cfg.backtest is not None:  # series models with a context
            from glow_train.series.registry import run_backtest

            for line in run_backtest(cfg.backtest, ckpt, cfg, typed_options(cfg)).lines():
                print(line)
            say_which(cfg, ckpt, "glow-eval")
            return
        mode = evaluate_ood if cfg.ood is not None else evaluate
        refuse_unused(mode, typed_options(cfg))
        result = mode(ckpt, options=cfg)
        say_which(cfg, ckpt, "glow-eval")
        say_precision(cfg, "glow-eval")
        if mode is evaluate_ood:
            print_ood(result)
        else:
            print_report(result)

    report("glow-eval", run)
