"""p(x) = sum_y p(y) p(x|y) of a class-conditional model: against an exact log-sum-exp
over classes computed independently, and against an unconditional model whose
classes share one prior."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import perturb

from glow_train import Glow, Glow1D
from glow_train.data import DataSpec, TensorImageDataset
from glow_train.evaluation.scoring import batch_seed, class_prior, evaluate_objective
from glow_train.likelihood.dequantize import build_dequantizer
from glow_train.likelihood.objective import Objective, build_objective, marginal_nll

SHAPE = dict(in_channels=1, image_size=8, K=2, L=2, hidden_channels=8, coupling="affine", lu=True)
SPEC = DataSpec(kind="image", shape=(1, 8, 8), n_bits=5, num_classes=3)


def conditional(num_classes: int = 3, offsets: float = 0.02) -> Glow:
    """A conditional Glow with perturbed weights and distinct class offsets."""
    torch.manual_seed(0)
    flow = perturb(Glow(**SHAPE, num_classes=num_classes), scale=0.2)
    with torch.no_grad():
        weight = flow.top_prior.class_embedding.weight
        weight.copy_(
            offsets * torch.randn(weight.shape, generator=torch.Generator().manual_seed(1))
        )
    return flow.eval()


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(seed))


def exact_marginal(objective: Objective, x: torch.Tensor, noise, p_y: torch.Tensor):
    """-log sum_y p(y) p(x|y) in float64 with one flow pass per class and a log-sum-exp
    written out (max shift), independent of Objective.class_nlls and marginal_nll."""
    per_class = []
    for k in range(len(p_y)):
        y = torch.full((len(x),), k)
        per_class.append(objective(x, noise, y).double())  # -log p(x|k) in nats
    log_joint = torch.stack(per_class, dim=1).neg() + p_y.double().log()
    top = log_joint.max(dim=1, keepdim=True).values
    return -(top.squeeze(1) + (log_joint - top).exp().sum(dim=1).log())


@pytest.mark.parametrize("prior", [[1 / 3, 1 / 3, 1 / 3], [0.6, 0.1, 0.3], [0.5, 0.5, 0.0]])
def test_the_marginal_is_the_exact_log_sum_exp_over_classes(prior):
    objective = Objective(conditional(), build_dequantizer("uniform", 5)).eval()
    p_y = torch.tensor(prior, dtype=torch.float64)
    x = objective.prepare(images())
    noise = objective.noise(x, torch.Generator().manual_seed(3))
    with torch.no_grad():
        nlls = objective.class_nlls(x, noise)
        got = marginal_nll(nlls, p_y.log())
        want = exact_marginal(objective, x, noise, p_y)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    # the classes really differ here, so the marginal is no single class's figure
    assert (nlls.max(1).values - nlls.min(1).values).min() > 0.01
    # and p(x) >= p(y=k) p(x|k) for every class: -log p(x) <= nll_k - log p(k)
    best_single = (nlls.double() - p_y.log()).min(1).values
    assert bool((got <= best_single + 1e-6).all())
    # ... with the other classes' share well above the tolerance: a max is not enough
    assert (best_single - got).max() > 0.05


def test_each_column_of_the_one_pass_is_the_class_figure_bit_for_bit():
    objective = Objective(conditional(), build_dequantizer("uniform", 5)).eval()
    x = objective.prepare(images())
    noise = objective.noise(x, torch.Generator().manual_seed(4))
    with torch.no_grad():
        nlls = objective.class_nlls(x, noise)
        for k in range(3):
            assert torch.equal(nlls[:, k], objective(x, noise, torch.full((6,), k)))


def test_classes_that_share_one_prior_give_the_unconditional_density():
    """Zero class offsets: p(x|y) = p(x) for every y, so the marginal under any p(y) is
    the unconditional model with the same weights."""
    flow = conditional(offsets=0.0)
    plain = Glow(**SHAPE)
    weights = {k: v for k, v in flow.state_dict().items() if "class_embedding" not in k}
    plain.load_state_dict(weights)
    deq = build_dequantizer("uniform", 5)
    with_classes, without = Objective(flow, deq).eval(), Objective(plain.eval(), deq).eval()
    x = with_classes.prepare(images(8, seed=1))
    noise = with_classes.noise(x, torch.Generator().manual_seed(5))
    for prior in ([1 / 3] * 3, [0.7, 0.2, 0.1]):
        with torch.no_grad():
            got = marginal_nll(with_classes.class_nlls(x, noise), torch.tensor(prior).log())
            want = without(x, noise)
        torch.testing.assert_close(got, want.double(), rtol=0, atol=1e-3)


def test_glow1d_marginal_matches_the_exact_sum():
    torch.manual_seed(0)
    flow = perturb(Glow1D(dim=4, K=2, hidden_features=8, coupling="affine", lu=True, num_classes=2))
    with torch.no_grad():
        flow.prior.class_embedding.weight.normal_(0, 0.5)
    objective = Objective(flow.eval(), build_dequantizer("identity", None)).eval()
    x = torch.randn(5, 4)
    p_y = torch.tensor([0.3, 0.7], dtype=torch.float64)
    with torch.no_grad():
        got = marginal_nll(objective.class_nlls(x, None), p_y.log())
        want = exact_marginal(objective, x, None, p_y)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_scoring_reports_the_marginal_and_the_same_conditional_figure():
    objective = build_objective(conditional(), SPEC)
    labels = torch.arange(10) % 3
    labelled = TensorImageDataset(images(10, seed=2).to(torch.uint8), labels, 3)
    settings = dict(batch_size=4, device="cpu", seed=7, draws=2)
    given = evaluate_objective(objective, labelled, **settings)
    p_y = class_prior("uniform", 3)
    both = evaluate_objective(objective, labelled, class_prior=p_y, **settings)
    # p(x|y) from the marginal's pass is the figure the trainer and glow-eval report
    assert both.conditional.value == given.value
    assert torch.equal(both.conditional.per_item, given.per_item)
    # the marginal per item, against the exact sum over classes with the same noise
    x = objective.prepare(labelled.images)
    per_item = []
    for draw in range(2):
        nll = []
        for i, start in enumerate(range(0, 10, 4)):
            gen = torch.Generator().manual_seed(batch_seed(7, draw, i))
            part = x[start : start + 4]
            nll.append(exact_marginal(objective, part, objective.noise(part, gen), p_y))
        per_item.append(torch.cat(nll))
    want = torch.stack(per_item).mean(0) / (64 * math.log(2))
    torch.testing.assert_close(both.per_item, want, rtol=0, atol=1e-6)
    # unlabelled items: the marginal alone (a conditional model's p(x|y) needs labels)
    unlabelled = TensorImageDataset(images(10, seed=2).to(torch.uint8), torch.full((10,), -1), 0)
    alone = evaluate_objective(objective, unlabelled, class_prior=p_y, **settings)
    assert alone.conditional is None and alone.value == pytest.approx(both.value, abs=1e-12)


def test_the_class_prior_is_uniform_or_the_training_frequencies():
    torch.testing.assert_close(
        class_prior("uniform", 4), torch.full((4,), 0.25, dtype=torch.float64)
    )
    labels = torch.tensor([0, 0, 0, 2, 2, 1, 0, 2])
    train = TensorImageDataset(torch.zeros(8, 1, 2, 2, dtype=torch.uint8), labels, 3)
    torch.testing.assert_close(
        class_prior("train", 3, train), torch.tensor([4, 1, 3], dtype=torch.float64) / 8
    )
    with pytest.raises(ValueError, match="class_prior must be one of uniform, train, got 'x'"):
        class_prior("x", 3)
