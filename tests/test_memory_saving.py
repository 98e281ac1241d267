"""The backward pass that recomputes activations by inversion."""

from __future__ import annotations

import pytest
import torch
from helpers import perturb

from glow_train import Glow, Glow1D


def gradients(model, x, memory_saving):
    model.set_memory_saving(memory_saving)
    model.zero_grad(set_to_none=True)
    loss = -model.log_prob(x).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def make(dtype, K=3):
    torch.manual_seed(0)
    model = Glow(3, 8, K=K, L=2, hidden_channels=8, coupling="affine", lu=True).to(dtype)
    x = torch.rand(4, 3, 8, 8, dtype=dtype) - 0.5
    model.initialize(x)
    return perturb(model, 0.05), x


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_same_loss_and_gradients_as_plain_autograd(dtype, tol):
    model, x = make(dtype)
    loss_a, grads_a = gradients(model, x, False)
    loss_b, grads_b = gradients(model, x, True)
    assert torch.equal(loss_a, loss_b)  # the forward pass is the same computation
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, atol=tol, rtol=tol, msg=name)


def test_glow1d_gradients_match():
    torch.manual_seed(0)
    model = perturb(Glow1D(6, K=4, hidden_features=16, coupling="affine", lu=True).double(), 0.1)
    x = torch.randn(5, 6, dtype=torch.float64)
    _, grads_a = gradients(model, x, False)
    _, grads_b = gradients(model, x, True)
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, atol=1e-10, rtol=1e-10, msg=name)


def saved_bytes(model, x) -> int:
    """Bytes autograd keeps for the backward pass (tensors saved by the forward)."""
    seen: dict[int, int] = {}

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.log_prob(x).sum()
    return sum(seen.values())


def test_activation_memory_does_not_grow_with_depth():
    plain, saving = [], []
    for K in (2, 8):
        model, x = make(torch.float32, K=K)
        model.set_memory_saving(False)
        plain.append(saved_bytes(model, x))
        model.set_memory_saving(True)
        saving.append(saved_bytes(model, x))
    assert plain[1] > 3 * plain[0]  # plain autograd: about linear in K
    assert saving[1] == saving[0]  # by inversion: independent of K
    assert saving[1] < plain[1] / 10


def test_each_conditioner_runs_once_more_not_twice():
    """A coupling's inverse and its recomputed forward share one conditioner pass."""
    from glow_train.flows.coupling import Coupling

    model, x = make(torch.float32)
    calls = []
    for m in model.modules():
        if isinstance(m, Coupling):
            m.net.register_forward_hook(lambda *_: calls.append(1))
    for saving, expected in ((False, 1), (True, 2)):
        calls.clear()
        model.set_memory_saving(saving)
        model.log_prob(x).sum().backward()
        couplings = sum(isinstance(m, Coupling) for m in model.modules())
        assert len(calls) == expected * couplings


def test_autocast_is_restored_in_the_recomputation():
    model, x = make(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, grads_a = gradients(model, x, False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, grads_b = gradients(model, x, True)
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, atol=1e-2, rtol=1e-2, msg=name)


def test_memory_saving_refuses_dropout(tmp_path):
    from test_train import TINY, compose_train

    from glow_train.errors import ConfigError
    from glow_train.training import train

    cfg = compose_train(
        *TINY, "train.memory_saving=true", "model.dropout=0.1", f"run_dir={tmp_path}"
    )
    with pytest.raises(ConfigError, match="set model.dropout=0 with it"):
        train(cfg)


def test_trainer_option(tmp_path):
    from test_train import TINY, compose_train

    from glow_train.training import train

    runs = []
    for flag in ("false", "true"):
        cfg = compose_train(
            *TINY,
            "train.max_steps=5",
            "model.dropout=0",
            "precision=fp32",  # exactness is a float32 property; bf16 rounds the two paths apart
            f"train.memory_saving={flag}",
            f"run_dir={tmp_path / flag}",
        )
        runs.append(train(cfg).model.state_dict())
    for name, value in runs[0].items():
        torch.testing.assert_close(runs[1][name], value, atol=1e-4, rtol=1e-4, msg=name)
