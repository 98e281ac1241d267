"""Out-of-distribution scores: the AUROC against scikit-learn's, and glow-eval ood= end to end."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_line_error, run_console
from sklearn.metrics import roc_auc_score

from glow_train.cli import eval_main, train_main
from glow_train.evaluation.ood import auroc

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    neg = rng.integers(0, 6, size=int(rng.integers(1, 40))).astype(float)  # many ties
    pos = rng.integers(2, 9, size=int(rng.integers(1, 40))).astype(float)
    expected = roc_auc_score(np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[neg, pos])
    assert auroc(torch.tensor(neg), torch.tensor(pos)) == pytest.approx(expected, abs=1e-12)
    cont_neg, cont_pos = rng.normal(0, 1, 50), rng.normal(0.7, 1, 30)
    expected = roc_auc_score(np.r_[np.zeros(50), np.ones(30)], np.r_[cont_neg, cont_pos])
    got = auroc(torch.tensor(cont_neg), torch.tensor(cont_pos))
    assert got == pytest.approx(expected, abs=1e-12)


def test_auroc_extremes():
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 1.0
    assert auroc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 0.0
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([1.0])) == 0.5
    with pytest.raises(ValueError, match="at least one score of each kind"):
        auroc(torch.tensor([]), torch.tensor([1.0]))


def write_letters(folder: Path) -> None:
    spec = importlib.util.spec_from_file_location("letters", ROOT / "scripts" / "letters.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert len(module.write_letters(folder)) == 52


def column(path: Path) -> torch.Tensor:
    with open(path) as f:
        return torch.tensor([float(row["bpd"]) for row in csv.DictReader(f)], dtype=torch.float64)


def test_glow_eval_ood_scores_both_sets(tmp_path):
    run = tmp_path / "run"
    args = ["model.K=2", "model.hidden_channels=16", "train.max_steps=100", "train.progress=false"]
    args += ["train.eval_every_steps=null", "train.sample_every=null", "train.warmup_steps=10"]
    status, out, err = run_console(train_main, [*args, f"run_dir={run}"], tmp_path)
    assert status == 0, err
    test_bpd = float(out.split("test bpd: ")[1].split()[0])
    write_letters(tmp_path / "letters")
    status, out, err = run_console(
        eval_main,
        [f"ckpt={run}/last.pt", f"ood={tmp_path / 'letters'}", "progress=false"],
        tmp_path,
    )
    assert status == 0, err
    summary = json.loads((run / "eval" / "last_ood_letters" / "eval.json").read_text())
    # the in-distribution figure is glow-eval's (and the trainer's) test figure
    assert summary["bpd_in"] == pytest.approx(test_bpd, abs=5e-5)
    assert (summary["num_in"], summary["num_ood"], summary["train_images"]) == (297, 52, 1300)
    inside = column(run / "eval" / "last_ood_letters" / "per_image.csv")
    outside = column(run / "eval" / "last_ood_letters" / "ood_per_image.csv")
    assert summary["auroc_bpd"] == pytest.approx(auroc(inside, outside), abs=1e-12)
    centre = summary["train_bpd_mean"]
    typical = auroc((inside - centre).abs(), (outside - centre).abs())
    assert summary["auroc_typicality"] == pytest.approx(typical, abs=1e-9)
    # (no claim on the direction: a 100-step model gives the thin, mostly black letters a
    # higher likelihood than digits, AUROC near 0: the known caveat of likelihood scores)
    assert 0 <= summary["auroc_bpd"] <= 1 and 0 <= summary["auroc_typicality"] <= 1
    assert "AUROC by bpd: " in out and "by typicality (|bpd - " in out
    for extra, message in (
        (["dataset=mnist"], "dataset=<name> does not apply (dataset.<key>= does)"),
        (["n_bits=3"], "n_bits= is not an option of ood= (it takes ood, ood_train_images,"),
    ):
        args = [f"ckpt={run}/last.pt", f"ood={tmp_path / 'letters'}", *extra]
        assert message in one_line_error(eval_main, args, tmp_path, "glow-eval")
    # dataset.<key>= still applies to the checkpoint's data, draws too
    args = [f"ckpt={run}/last.pt", f"ood={tmp_path / 'letters'}", "dataset.eval_batch_size=50"]
    status, _, err = run_console(eval_main, [*args, "draws=2", "progress=false"], tmp_path)
    assert status == 0, err
    summary = json.loads((run / "eval" / "last_ood_letters" / "eval.json").read_text())
    assert summary["draws"] == 2 and summary["num_in"] == 297
    for ood, message in (
        (
            "nowhere",
            "ood=nowhere is neither a folder of images nor an image dataset (digits, mnist",
        ),
        ("csv", "ood=csv is neither a folder of images nor an image dataset"),
    ):
        line = one_line_error(
            eval_main, [f"ckpt={run}/last.pt", f"ood={ood}"], tmp_path, "glow-eval"
        )
        assert message in line, line
