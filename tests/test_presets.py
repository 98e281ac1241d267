"""Each dataset's preset composes to its recommended model and schedule (Hydra's compose
API), every example command in the configs composes to what it says, and each preset
trains a few steps on tiny data in the real format.

In the training tests the presets' data pipelines, levels, bit depths, dequantisation
and schedules run as configured; only the depth K and the conditioner width are shrunk
(a K=32, 512-wide step at 256x256 takes tens of seconds on a CPU), and batches are two
images.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_console
from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from PIL import Image
from test_data import celeba_root, cifar_root, existence_only, mnist_root  # noqa: F401

from glow_train.cli import train_main

SMALL = ["model.K=1", "model.hidden_channels=8", "train.max_steps=2", "train.progress=false"]
SMALL += ["dataset.batch_size=2", "dataset.num_workers=0", "train.init_samples=2"]
SMALL += ["train.eval_every_steps=2", "train.num_samples=4", "dataset.eval_batch_size=2"]


@pytest.fixture
def faces_256(tmp_path):
    """A folder of twelve 280x300 JPEG 'faces' (CelebA-HQ is a folder of images)."""
    root = tmp_path / "celeba-hq"
    root.mkdir()
    rng = np.random.default_rng(3)
    for i in range(12):
        pixels = rng.integers(0, 256, (300, 280, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i:05d}.jpg", quality=90)
    return root


def run_preset(tmp_path, experiment: str, *extra: str):
    run_dir = tmp_path / "run"
    args = [f"experiment={experiment}", *SMALL, f"run_dir={run_dir}", *extra]
    status, out, err = run_console(train_main, args, tmp_path)
    assert status == 0, err
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["step"] == 2 and np.isfinite(state["last_val_score"])
    return state["config"], out


def shape(cfg) -> tuple[int, int, int]:
    """(levels, image size, bits) of a run's saved config."""
    return cfg["model"]["L"], cfg["dataset"]["image_size"], cfg["dataset"]["n_bits"]


def test_mnist_preset_on_idx_files(tmp_path, mnist_root):  # noqa: F811
    root, _ = mnist_root
    cfg, out = run_preset(tmp_path, "mnist", f"dataset.root={root}", "dataset.val_size=1")
    assert shape(cfg) == (2, 32, 8)
    assert "test bpd:" in out
    assert "training: mnist, preset mnist (" in out  # the start-up line names the preset


def test_cifar10_preset_on_pickled_batches(tmp_path, cifar_root, monkeypatch):  # noqa: F811
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", existence_only)
    root, _ = cifar_root
    cfg, _ = run_preset(tmp_path, "cifar10", f"dataset.root={root}", "dataset.val_size=2")
    assert (cfg["model"]["L"], cfg["train"]["dequantization"]) == (3, "uniform")


def test_celeba_preset_on_aligned_jpegs(tmp_path, celeba_root, monkeypatch):  # noqa: F811
    monkeypatch.setattr("torchvision.datasets.celeba.check_integrity", existence_only)
    cfg, _ = run_preset(tmp_path, "celeba", f"dataset.root={celeba_root}", "dataset.val_size=1")
    assert shape(cfg) == (4, 64, 5)
    prepared = celeba_root / "celeba" / "celeba_train_crop148_64x64x3.npy"  # prepared=auto
    assert np.load(prepared).shape == (3, 64, 64, 3)


def test_celeba_hq256_preset_on_a_folder_of_faces(tmp_path, faces_256):
    extra = [f"dataset.root={faces_256}", "dataset.val_size=2", "dataset.test_fraction=0.3"]
    cfg, _ = run_preset(tmp_path, "celeba_hq256", *extra)
    assert shape(cfg) == (6, 256, 5)
    assert cfg["model"]["coupling"] == "additive"


# ----------------------------------------------------------------------- composition

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def compose_config(name: str, overrides: list[str], hydra: bool = False):
    with initialize_config_module("glow_train.configs", version_base="1.3"):
        return compose(name, overrides=overrides, return_hydra_config=hydra)


def key_values(cfg) -> tuple:
    """(preset, model, K, L, width, lr, max_steps, time_limit) of a composed train config."""
    m, t = cfg.model, cfg.train
    width = m.get("hidden_channels", m.get("hidden_features"))
    return cfg.preset, m.name, m.K, m.get("L"), width, t.lr, t.max_steps, t.time_limit


#: what ``glow-train dataset=<name>`` trains
PRESETS = {
    "digits": ("digits", "glow", 16, 1, 64, 7e-3, 1300, "5m"),
    "mnist": ("mnist", "glow", 16, 2, 256, 1e-3, 100_000, None),
    "cifar10": ("cifar10", "glow", 32, 3, 512, 1e-3, 300_000, None),
    "celeba": ("celeba", "glow", 32, 4, 512, 1e-3, 300_000, None),
    "csv": ("csv", "glow1d", "auto", None, "auto", 5e-4, "auto", None),  # sized by the split
    "folder": (None, "glow", 32, 3, 512, 1e-3, 100_000, None),  # no preset: the neutral values
}


@pytest.mark.parametrize("dataset", sorted(PRESETS))
def test_each_dataset_composes_its_preset(dataset):
    cfg = compose_config("train", [f"dataset={dataset}"])
    assert key_values(cfg) == PRESETS[dataset]
    if dataset in ("mnist", "cifar10", "celeba"):  # the paper's optimisation
        t = cfg.train
        paper = (t.optimizer, t.weight_decay, t.dequantization, t.ema_decay, cfg.model.dropout)
        assert paper == ("adam", 0.0, "uniform", 0.999, 0.0)
        # experiment=<name> stays the same run
        assert cfg == compose_config("train", [f"experiment={dataset}"])


def test_every_dataset_with_a_preset_file_is_a_dataset():
    presets = {p.stem for p in (CONFIGS / "preset").glob("*.yaml")}
    datasets = {p.stem for p in (CONFIGS / "dataset").glob("*.yaml")}
    assert presets == {name for name, v in PRESETS.items() if v[0] is not None}
    assert presets <= datasets and set(PRESETS) == datasets


def test_digits_preset_keeps_the_tuned_demo_settings():
    """`glow-train` (make demo) trains the settings measured for it: Glow's schedule
    with Flow++'s logistic-mixture coupling (docs/guide/training.md)."""
    cfg = compose_config("train", [])
    assert key_values(cfg) == PRESETS["digits"] and cfg.dataset.name == "digits"
    t, m = cfg.train, cfg.model
    assert (m.dropout, m.coupling, m.mixture_components, t.optimizer, t.weight_decay) == (
        0.1, "logistic_mixture", 4, "adamw", 0.2
    )  # fmt: skip
    assert t.warmup_steps == 200
    assert (t.ema_decay, t.dequantization, t.eval_every_steps, t.ckpt_every) == (
        0.99, "variational", 300, 500
    )  # fmt: skip


def test_command_line_overrides_win_over_the_preset_and_experiments_compose_on_top():
    cfg = compose_config("train", ["dataset=cifar10", "model.K=8", "train.lr=5e-4"])
    assert key_values(cfg) == ("cifar10", "glow", 8, 3, 512, 5e-4, 300_000, None)
    cfg = compose_config("train", ["dataset=csv", "model.K=3", "dataset.batch_size=64"])
    assert (cfg.model.name, cfg.model.K, cfg.dataset.batch_size) == ("glow1d", 3, 64)
    cfg = compose_config("train", ["experiment=celeba_hq256"])
    assert key_values(cfg)[:5] == ("celeba_hq256", "glow", 32, 6, 512)
    assert (cfg.dataset.name, cfg.dataset.image_size, cfg.model.coupling) == (
        "folder", 256, "additive"
    )  # fmt: skip
    cfg = compose_config("train", ["experiment=tabular"])
    assert key_values(cfg) == PRESETS["csv"]
    # a preset chosen by name for another dataset
    cfg = compose_config("train", ["dataset=folder", "preset=celeba"])
    assert key_values(cfg) == PRESETS["celeba"] and cfg.dataset.name == "folder"


#: what each example command in the configs' comments and help texts trains
TRAIN_EXAMPLES = {
    "glow-train": PRESETS["digits"],
    "glow-train dataset=mnist": PRESETS["mnist"],
    "glow-train dataset=cifar10": PRESETS["cifar10"],
    "glow-train dataset=cifar10 model.K=8 train.lr=5e-4": (
        "cifar10", "glow", 8, 3, 512, 5e-4, 300_000, None
    ),
    "glow-train dataset=csv dataset.path=data.csv": PRESETS["csv"],
    "glow-train dataset=csv dataset.path=prices.csv dataset.columns=[close] "
    "dataset.window=20 dataset.transform=log_return": PRESETS["csv"],
    "glow-train experiment=tabular dataset.path=data.csv": PRESETS["csv"],
    "glow-train ckpt=runs/digits/2026-01-01_00-00-00/last.pt": PRESETS["digits"],  # resumes
    "glow-train experiment=cifar10_flowpp dataset.root=/data/cifar10": (
        "cifar10_flowpp", "glow", 9, 1, 96, 3e-4, 300_000, None
    ),
    "glow-train experiment=celeba_hq256 dataset.root=/data/celeba-hq": (
        "celeba_hq256", "glow", 32, 6, 512, 1e-3, 1_000_000, None
    ),
    "glow-train dataset=folder dataset.root=/data/celeba-hq dataset.image_size=256": (
        PRESETS["folder"]
    ),
    "glow-train -m hydra/sweeper=digits_search": PRESETS["digits"],
    "glow-train -m hydra/sweeper=digits_search hydra.sweeper.n_trials=3 train.max_steps=200": (
        "digits", "glow", 16, 1, 64, 7e-3, 200, "5m"
    ),
    "glow-train -m hydra/launcher=slurm_cpu hydra/sweeper=digits_search device=cpu": (
        PRESETS["digits"]
    ),
    "glow-train -m hydra/launcher=slurm_gpu hydra.launcher.partition=gpu experiment=cifar10": (
        PRESETS["cifar10"]
    ),
    "glow-train -m hydra/launcher=slurm_gpu hydra.launcher.nodes=2 "
    "hydra.launcher.gpus_per_node=8": PRESETS["digits"],
}  # fmt: skip

EXAMPLE = re.compile(r"^\s*(?:#\s*)?(glow-(?:train|sample|eval))(?=\s|$)(.*)$")


def config_examples() -> list[tuple[str, list[str], str]]:
    """Every example command in the YAML under configs/ (comments and help texts):
    ``(command, arguments, where)``; ``\\`` continues a command on the next line,
    ``ckpt=...`` and ``<time>`` stand for a checkpoint, a lone ``...`` for more options."""
    found = []
    for path in sorted(CONFIGS.rglob("*.yaml")):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            match = EXAMPLE.match(line)
            if not match:
                continue
            text, following = match[2], number
            while text.rstrip().endswith("\\"):
                following += 1
                text = text.rstrip()[:-1] + " " + lines[following].lstrip("# ")
            args = re.split(r"\s#", text)[0].split()
            where = f"{path.relative_to(CONFIGS)}:{number + 1}"
            assert all(a == "-m" or a == "..." or "=" in a for a in args), (where, args)
            args = [a.replace("ckpt=...", "ckpt=x.pt") for a in args if a != "..."]
            args = [a.replace("<time>", "2026-01-01_00-00-00") for a in args]  # a placeholder
            found.append((match[1], args, where))
    return found


def test_every_example_command_in_the_configs_composes_to_what_it_says():
    """Each example composes; each of its key=value options lands as typed, and a
    glow-train example trains the preset, model and schedule TRAIN_EXAMPLES says."""
    examples = config_examples()
    assert len(examples) >= 20
    names = {"glow-train": "train", "glow-sample": "sample", "glow-eval": "eval"}
    parser = OverridesParser.create()
    seen = set()
    for command, args, where in examples:
        multirun = "-m" in args
        overrides = [a for a in args if a != "-m"]
        cfg = compose_config(names[command], overrides, hydra=multirun)
        for override in parser.parse_overrides(overrides):
            key = override.key_or_group
            if (CONFIGS / key).is_dir():  # a group choice (dataset=mnist, hydra/launcher=...)
                continue
            value = OmegaConf.select(cfg, key)
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            assert value == override.value(), (where, key)
        if command == "glow-train":
            key = " ".join([command, *args])
            assert key in TRAIN_EXAMPLES, f"{where}: add what `{key}` trains to TRAIN_EXAMPLES"
            assert key_values(cfg) == TRAIN_EXAMPLES[key], where
            seen.add(key)
    assert seen == set(TRAIN_EXAMPLES)  # no stale entry


def test_a_resumed_run_keeps_its_preset_and_its_overrides(tmp_path):
    """``glow-train ckpt=<run>`` continues with the run's own config (its preset and the
    options it was started with), not today's defaults; another preset is refused."""
    run = tmp_path / "run"
    first = ["dataset=digits", "model.K=2", "model.hidden_channels=8", "train.max_steps=2"]
    first += ["train.progress=false", "train.eval_every_steps=null", f"run_dir={run}"]
    status, out, err = run_console(train_main, first, tmp_path)
    assert status == 0, err
    resume = [f"ckpt={run / 'last.pt'}", "train.max_steps=3", "train.progress=false"]
    status, out, err = run_console(train_main, resume, tmp_path)
    assert status == 0, err
    assert out.splitlines()[0].startswith(
        f"resuming {run / 'last.pt'} at step 2: digits, preset digits ("
    )
    saved = torch.load(run / "last.pt", weights_only=True)["config"]
    assert (saved["preset"], saved["model"]["K"], saved["model"]["hidden_channels"]) == (
        "digits",
        2,
        8,
    )
    assert saved["train"]["max_steps"] == 3 and saved["train"]["lr"] == 7e-3
    status, out, err = run_console(train_main, [*resume[:1], "preset=mnist"], tmp_path)
    assert status == 2 and "cannot change preset=mnist when resuming" in err
