"""The training step as a GPU runs it, checked on the CPU: no host synchronisation in a
steady-state step, a bounded number of kernels per step, compiled without graph breaks
or recompilation."""

from __future__ import annotations

import threading
import weakref
from collections import Counter

import pytest
import torch
from test_train import TINY as TRAIN_TINY
from test_train import compose_train
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from glow_train.data import Batch
from glow_train.runtime.distributed import DistInfo
from glow_train.training import Trainer

#: test_train's tiny run, on the CPU, with a larger initialisation batch
TINY = [*TRAIN_TINY, "train.init_samples=32", "device=cpu"]

#: the operators that make the host wait for a CUDA device: a tensor's value read on the
#: host (`.item()`, `bool(t)`, `float(t)`, `.nonzero()`, `torch.equal`) and a tensor made
#: from host data in the step (on CUDA a copy to the device)
SYNCING = {"_local_scalar_dense", "is_nonzero", "nonzero", "equal", "item", "lift_fresh"}


class SyncCounter(TorchDispatchMode):
    """Counts the operators of `SYNCING` on device tensors, and the copies between
    devices that block.

    On the CPU every tensor is on the host, so the counter follows which would be:
    the tensors of `host` (the loader's batches) and whatever is computed from them
    alone. Reading those is host work that no device waits for (e.g. a label check
    before the copy to the device).
    """

    def __init__(self, host: list[torch.Tensor] = ()):
        super().__init__()
        self.seen: Counter[str] = Counter()
        self.host: dict[int, weakref.ref] = {}
        for t in host:
            self.mark(t)

    def mark(self, t: torch.Tensor) -> None:
        self.host[id(t)] = weakref.ref(t)

    def copy_to_device(self, batch: Batch) -> Batch:
        """`Batch.to` as on a GPU: a copy that is not on the host, even on the CPU."""
        copied = Batch(batch.x.clone(), batch.y.clone())
        for t in (copied.x, copied.y):
            self.host.pop(id(t), None)
        return copied

    def on_host(self, t: torch.Tensor) -> bool:
        known = self.host.get(id(t))
        return known is not None and known() is t

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        out = func(*args, **kwargs)
        inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if inputs and all(self.on_host(t) for t in inputs):
            for t in pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.mark(t)
            return out
        if name in SYNCING:
            self.seen[name] += 1
        elif name in ("copy_", "_to_copy") and not kwargs.get("non_blocking", False):
            source = args[1] if name == "copy_" else args[0]
            target = args[0] if name == "copy_" else out
            if source.device != target.device:
                self.seen[f"{name} {source.device}->{target.device}"] += 1
        return out


def tiny_trainer(tmp_path, *extra: str) -> Trainer:
    cfg = compose_train(*TINY, "train.max_steps=50", f"run_dir={tmp_path}", *extra)
    trainer = Trainer(cfg, DistInfo(), tmp_path)
    trainer.prepare()
    return trainer


@pytest.mark.parametrize(
    "extra",
    [
        [],  # the default: deferred fused Adam with the EMA, fp32
        ["precision=bf16", "model.conditional=true", "train.class_loss_weight=0.1"],
    ],
    ids=["fp32", "bf16-conditional"],
)
def test_a_steady_state_step_never_waits_for_the_device(tmp_path, extra, monkeypatch):
    """A steady-state step (batch preparation and `train_step`) reads nothing back from
    the device and makes no blocking copy: on CUDA the host runs ahead of the GPU."""
    trainer = tiny_trainer(tmp_path, *extra)
    assert trainer.optim.deferred and trainer.optim.ema is not None
    loader = iter(trainer.loader)
    batches = [next(loader) for _ in range(5)]  # read outside: a loader worker's business
    for step in range(2):  # the first steps: nothing pending yet, the EMA's first copy
        trainer.train_step(*trainer.prepare_batch(batches[step], step))
    counter = SyncCounter([t for b in batches for t in (b.x, b.y)])
    monkeypatch.setattr(Batch, "to", lambda batch, *a, **k: counter.copy_to_device(batch))
    with counter:
        for step in range(2, 5):
            trainer.train_step(*trainer.prepare_batch(batches[step], step))
    assert not counter.seen, dict(counter.seen)
    ema = trainer.optim.ema
    assert ema.n_averaged.device == next(trainer.model.parameters()).device
    trainer.settle()
    assert trainer.progress.step == 5 and trainer.progress.skipped_steps == 0


def test_the_counter_sees_the_synchronisations_it_is_for():
    """The counter is not blind: `.item()`, `bool(t)` and a tensor from host data count
    on device tensors, and not on host ones."""
    x, host = torch.ones(3), torch.ones(3)
    with SyncCounter([host]) as counter:
        x.sum().item()
        bool((x > 0).any())
        torch.tensor(1.0)
        bool((host > 0).any())
    assert counter.seen == {"_local_scalar_dense": 2, "lift_fresh": 1}


def test_compile_auto_is_off_on_the_cpu(tmp_path):
    trainer = tiny_trainer(tmp_path)  # train.compile=auto, the default
    assert trainer.compile_seconds is None
    assert not any(
        hasattr(m, "_compiled_call_impl") and m._compiled_call_impl for m in trainer.model.modules()
    )


@pytest.mark.parametrize(
    "backend",
    # graph breaks and recompilations are the graph capture's (dynamo's) business, which
    # aot_eager runs quickly (with the backward graphs); inductor generates the C++ too
    ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)],
)
def test_compiled_training_has_no_graph_break_and_no_recompilation(tmp_path, backend, monkeypatch):
    """Each coupling compiles once per level at start-up (timed); the steps, evaluation,
    the checkpoint's probe and the samples that follow compile nothing more."""
    from torch._dynamo.utils import counters

    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(
        torch.nn.Module, "compile", lambda m, **kw: compile_module(m, backend=backend, **kw)
    )
    torch._dynamo.reset()
    counters.clear()
    extra = ["train.compile=true", "train.max_steps=4", "train.ckpt_every=2"]
    extra += ["train.eval_every_steps=2", "train.sample_every=2", "train.ema_decay=null"]
    trainer = tiny_trainer(tmp_path, *extra)
    assert trainer.compile_seconds is not None and trainer.compile_seconds > 0
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == 2  # model.L=2: the couplings of each level share one graph
    result = trainer.fit()
    assert result.step == 4 and result.skipped_steps == 0
    assert (tmp_path / "last.pt").exists() and (tmp_path / "best.pt").exists()
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == graphs


class KernelCounter(TorchDispatchMode):
    """Counts the operators that compute (launch a kernel on a GPU): every operator but
    views and type queries."""

    FREE = frozenset({"promote_types", "result_type"})

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.overloadpacket.__name__ not in self.FREE:
            self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def test_a_conditioner_under_autocast_casts_once_with_the_same_result():
    """Under bf16 autocast the conditioner casts its weights as one tensor: the same
    output and gradients, bit for bit, as autocast casting each weight, in 6 casts
    forward and backward instead of 18."""
    from helpers import perturb

    from glow_train.flows.conditioner import conv_conditioner

    torch.manual_seed(0)
    net = perturb(conv_conditioner(6, 32, 12)).to(memory_format=torch.channels_last)
    x = torch.randn(4, 6, 8, 8).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)

    def run(forward):
        net.zero_grad()
        x.grad = None
        with KernelCounter() as counter:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = forward(x)
            y.float().square().sum().backward()
        return y, [p.grad for p in net.parameters()] + [x.grad], counter.ops["_to_copy"]

    plain, plain_grads, plain_casts = run(lambda v: torch.nn.Sequential.forward(net, v))
    once, grads, casts = run(net)
    assert once.dtype == torch.bfloat16 and torch.equal(once, plain)
    assert all(torch.equal(a, b) for a, b in zip(grads, plain_grads, strict=True))
    # the input and the weights in, the test's float() out, each back again; autocast:
    # the input, 3 weights, 3 biases and the scale in, float() out, each back again
    assert (casts, plain_casts) == (6, 18)


#: Kernels (computing operators) of one training step of the CIFAR-10 preset's model
#: (K=32, L=3, EMA, fused Adam, batch 2), counted on the CPU: 4,435 in fp32 and 5,203
#: in bf16 (6,162 before the conditioners cast their weights once); the figures are in
#: docs/results.md (GPU figures). A change that adds a kernel to every coupling adds 96.
KERNEL_BUDGET = {"fp32": 4500, "bf16": 5300}


@pytest.fixture
def one_thread():
    """Counting needs no parallelism: one thread spares a shared machine's cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_cifar10_step_stays_within_its_kernel_budget(tmp_path, precision, one_thread):
    from glow_train.data import TensorImageDataset

    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    data = TensorImageDataset(images, torch.zeros(8, dtype=torch.long), num_classes=0)
    overrides = ["dataset=cifar10", f"precision={precision}", "device=cpu", "train.init_samples=4"]
    overrides += ["dataset.batch_size=2", "dataset.num_workers=0", f"run_dir={tmp_path}"]
    # the preset's 512 hidden channels give the same operators, only slower
    overrides += ["model.hidden_channels=16"]
    cfg = compose_train(*overrides)
    assert (cfg.model.K, cfg.model.L, cfg.train.ema_decay) == (32, 3, 0.999)
    trainer = Trainer(cfg, DistInfo(), tmp_path, data, data, data)
    trainer.prepare()
    x, noise, y = trainer.prepare_batch(next(iter(trainer.loader)), 0)
    for _ in range(2):  # past the first steps (the EMA's first copy, nothing pending)
        trainer.train_step(x, noise, y)
    with KernelCounter() as counter:
        trainer.train_step(x, noise, y)
    assert 0.8 * KERNEL_BUDGET[precision] < counter.total <= KERNEL_BUDGET[precision], counter.ops


def test_tf32_switches_both_float32_paths_and_the_checkpoint_records_it(tmp_path):
    from glow_train.runtime.tf32 import set_tf32

    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    try:
        set_tf32(True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        set_tf32(False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]
    trainer = tiny_trainer(tmp_path, "train.tf32=false")
    assert trainer.state_dict()["config"]["train"]["tf32"] is False


def test_a_checkpoint_written_in_the_background_is_its_steps_state(tmp_path, monkeypatch):
    """The periodic `last.pt` is written from a host copy by a thread: the steps that run
    meanwhile change nothing in it, and a failed write raises at the next save."""
    from glow_train.io.checkpoint import load_checkpoint
    from glow_train.training import saving

    trainer = tiny_trainer(tmp_path)
    x, noise, y = trainer.prepare_batch(next(iter(trainer.loader)), 0)
    trainer.train_step(x, noise, y)
    trainer.settle()
    expected = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    written = saving.save_checkpoint
    started = threading.Event()

    def slow_save(state, path):  # the steps below run while this write is in flight
        started.wait(timeout=60)
        return written(state, path)

    monkeypatch.setattr(saving, "save_checkpoint", slow_save)
    path = trainer.checkpoints.save("last.pt", trainer.step, background=True)
    for _ in range(3):
        trainer.train_step(x, noise, y)
    started.set()
    trainer.checkpoints.wait()
    saved = load_checkpoint(path)
    assert saved["step"] == 1 and trainer.checkpoints.last_good == (path, 1)
    flow = {k[len("flow.") :]: v for k, v in saved["objective"].items() if k.startswith("flow.")}
    assert all(torch.equal(flow[k], v) for k, v in expected.items())
    assert not all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in expected.items())

    def failing(state, path):
        raise OSError("disk full")

    monkeypatch.setattr(saving, "save_checkpoint", failing)
    trainer.checkpoints.save("last.pt", trainer.step, background=True)
    with pytest.raises(OSError, match="disk full"):
        trainer.checkpoints.save("best.pt", trainer.step)
