"""Variational dequantisation: its log q(u|x), the bound on data of known entropy,
and the whole path through the trainer, checkpoints and glow-eval."""

from __future__ import annotations

import math

import torch
from helpers import perturb, run_console
from test_train import TINY
from torch import Tensor
from torch.distributions import Normal, SigmoidTransform, TransformedDistribution

from glow_train.cli import eval_main, train_main
from glow_train.likelihood.dequantize import Variational
from glow_train.likelihood.loading import load_objective
from glow_train.likelihood.objective import Objective
from glow_train.models.base import FlowModel


class UniformBox(FlowModel):
    """The uniform density on [-1/2, 1/2)^D: log p = 0 inside."""

    name = "uniform-box"

    def __init__(self, dim: int):
        super().__init__()
        self.config, self.num_dims, self.num_classes = {"dim": dim}, dim, 0
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        inside = ((x >= -0.5) & (x < 0.5)).flatten(1).all(1)
        return torch.where(inside, 0.0, -math.inf).double()


def grid_images(n: int, n_bits: int, seed: int = 0) -> Tensor:
    """Every bin equally likely: x = q / 2^n - 1/2, q uniform in 0..2^n-1."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 2**n_bits, (n, 1, 4, 4), generator=g)
    return q.float() / 2**n_bits - 0.5


def test_log_q_is_a_logit_normal_density():
    torch.manual_seed(0)
    deq = perturb(Variational(n_bits=3, channels=2, hidden=8), 0.3).double()
    x = torch.rand(3, 2, 4, 4, dtype=torch.float64) - 0.5
    eps = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    y, log_q = deq(x, eps)
    h = deq.net(x)
    mean, scale = h[:, 0::2], torch.exp(h[:, 1::2])
    u = torch.sigmoid(mean + scale * eps)
    exact = TransformedDistribution(Normal(mean, scale), SigmoidTransform()).log_prob(u)
    torch.testing.assert_close(log_q, exact.flatten(1).sum(1))
    torch.testing.assert_close(y, x + u / 2**3)
    assert ((u > 0) & (u < 1)).all()  # the noise stays inside the bin


def bound(objective: Objective, x: Tensor, draws: int = 8) -> float:
    """The mean bits/dim bound over a few noise draws."""
    with torch.no_grad():
        values = [
            objective.score(objective(x, objective.noise(x, None))).mean() for _ in range(draws)
        ]
    return float(torch.stack(values).mean())


def test_the_bound_approaches_the_entropy_of_uniform_bins():
    """log P(x) = -n log 2 per dimension exactly; the bound is never below it and
    comes within a few hundredths of a bit of it once q is trained."""
    torch.manual_seed(0)
    n_bits = 2
    objective = Objective(UniformBox(16), Variational(n_bits, channels=1, hidden=8))
    x = grid_images(256, n_bits)
    before = bound(objective, x)
    assert before > n_bits + 0.05  # a logit-normal(0, 1) is far from uniform
    opt = torch.optim.Adam(objective.dequantizer.parameters(), lr=5e-2)
    for _ in range(300):
        opt.zero_grad()
        loss = objective.score(objective(x, objective.noise(x, None))).mean()
        loss.backward()
        opt.step()
    after = bound(objective, x, draws=16)
    assert n_bits - 0.01 < after < n_bits + 0.03, (before, after)


def test_variational_dequantisation_end_to_end(tmp_path):
    run = tmp_path / "run"
    args = [*TINY, "train.max_steps=12", "train.dequantization=variational", f"run_dir={run}"]
    status, out, err = run_console(train_main, args, tmp_path)
    assert status == 0, err
    objective, info = load_objective(run / "last.pt")
    assert isinstance(objective.dequantizer, Variational)
    assert info["objective_config"]["dequantizer"] == "variational"
    # the dequantiser was trained with the flow: its last layer left zero
    assert objective.dequantizer.net[2].layer.weight.abs().sum() > 0
    status, out, err = run_console(
        eval_main, [f"ckpt={run / 'last.pt'}", "progress=false"], tmp_path
    )
    assert status == 0, err
    test_line = out.strip().splitlines()[-1]
    assert test_line == f"test bpd: {info['last_test_score']:.4f}"  # the same bound as the trainer


def test_conditioner_dropout_trains_only_and_keeps_the_state_dict():
    from glow_train import Glow

    torch.manual_seed(0)
    plain = Glow(1, 8, K=2, L=2, hidden_channels=8, coupling="affine", lu=True)
    dropped = Glow(1, 8, K=2, L=2, hidden_channels=8, coupling="affine", lu=True, dropout=0.5)
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    dropped.load_state_dict(perturb(plain, 0.2).state_dict())
    x = torch.rand(4, 1, 8, 8) - 0.5
    dropped.initialize(x)
    plain.load_state_dict(dropped.state_dict())
    plain.eval(), dropped.eval()
    torch.testing.assert_close(dropped.log_prob(x), plain.log_prob(x))  # eval: no dropout
    dropped.train()
    assert not torch.allclose(dropped.log_prob(x), plain.log_prob(x))


def test_dropout_drops_with_its_probability_and_keeps_the_mean():
    from glow_train.flows.conditioner import Dropout, dropout

    torch.manual_seed(0)
    x = torch.rand(1_000_003, dtype=torch.float64) + 0.5  # an odd count: a partial last word
    for p in (0.1, 0.5):
        y = dropout(x, p)
        dropped = (y == 0).double().mean().item()
        assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / x.numel())
        kept = y != 0
        torch.testing.assert_close(y[kept], x[kept] / (1 - p), rtol=1e-4, atol=0)
        assert abs(y.mean().item() / x.mean().item() - 1) < 0.005  # E[dropout(x)] = x
    # the gradient is the same mask and scale
    x = torch.ones(64, 8, requires_grad=True)
    y = dropout(x, 0.25)
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())
    # seeded by the global generator; the identity at p = 0 and in eval mode
    torch.manual_seed(3)
    a = dropout(torch.ones(100), 0.3)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(torch.ones(100), 0.3))
    assert torch.equal(dropout(x, 0.0), x)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))


def test_adamw_decouples_weight_decay(tmp_path):
    from test_train import compose_train

    from glow_train.training import train

    result = train(
        compose_train(
            *TINY,
            "train.max_steps=3",
            "train.optimizer=adamw",
            "train.weight_decay=0.1",
            "model.dropout=0.1",
            f"run_dir={tmp_path}",
        )
    )
    from glow_train.io.checkpoint import load_checkpoint

    groups = load_checkpoint(result.last_ckpt)["optimizer"]["param_groups"]
    assert groups[0]["weight_decay"] == 0.1 and groups[0]["fused"]
    assert "decoupled_weight_decay" not in groups[0] or groups[0]["decoupled_weight_decay"]
