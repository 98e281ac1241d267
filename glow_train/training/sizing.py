r"""`auto` settings: values that follow the size of the training split.

A few settings may be the word `auto` (`AUTO_KEYS`); the trainer then
resolves each from the number of training items $n$ by the rule in the
config's `sizing` table, `sizing.<section>.<key>` (`configs/preset/csv.yaml`
holds the vector data's):

    value = clip(round_to(multiple, base * (n / reference_items) ** exponent), min, max)

so width, depth and batch grow with the data, dropout shrinks with it, and the
step budget and the evaluation interval follow the number of batches in an epoch.
`multiple: null` keeps the value unrounded (dropout). A choice (`model.prior`,
`model.coupling`) has a plain value as its rule, and so may a number that does not
follow $n$ (`train.weight_decay`).
With `dataset.context`, the rules under `sizing.context` replace those of the
same keys: a window given its past needs a smaller flow (its couplings see few
values; one, for a window of 1), a prior whose parameters the context can move,
spline couplings that shape the residual, and evaluations twice as often (the
model starts at a fitted GJR-GARCH-t, `glow_train.models.memory`, and its
validation figure turns within a few epochs), and a weight decay that keeps the
networks near zero, where the model is that GJR-GARCH-t, so that training past the
best validation figure does not drift away from it.
The resolved numbers are what the run's `config.yaml` and checkpoints record, and
the start-up line prints.

An `auto` step budget is also capped by the work it plans, `sizing.train.work_budget`:
$\text{steps} \cdot \text{batch} \cdot K \cdot h\,(D + h) \le \text{budget}$ for $K$
steps of flow of width $h$ on items of $D$ values, so that a table of any size trains
in minutes on a laptop CPU with the defaults; the start-up line then says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from glow_train.errors import ConfigError, show

__all__ = ["AUTO", "AUTO_KEYS", "auto_keys", "resolve_auto", "sized_value", "describe_chosen"]

AUTO = "auto"
#: the settings that may be `auto`, and the type each resolves to
AUTO_KEYS: dict[str, type] = {
    "model.K": int,
    "model.hidden_features": int,
    "model.dropout": float,
    "model.prior": str,
    "model.coupling": str,
    "dataset.batch_size": int,
    "train.max_steps": int,
    "train.warmup_steps": int,
    "train.eval_every_steps": int,
    "train.weight_decay": float,
}
RULE_KEYS = ("base", "exponent", "min", "max", "multiple")


def _get(cfg: Any, dotted: str) -> Any:
    section, key = dotted.split(".")
    part = cfg.get(section)
    return None if part is None else part.get(key)


def auto_keys(cfg: Any) -> list[str]:
    """The `AUTO_KEYS` whose value is `auto` in `cfg`; any other string in one
    of them is a `ConfigError`, as is an `auto` without a `sizing` rule."""
    found = []
    for key, kind in AUTO_KEYS.items():
        value = _get(cfg, key)
        if isinstance(value, str):
            if value != AUTO and kind is str:
                continue  # a choice, checked by whatever takes it
            if value != AUTO:
                raise ConfigError(f"{key} must be a number or auto, got {value!r}")
            found.append(key)
    sizing = cfg.get("sizing") or {}
    for key in found:
        if _get(sizing, key) is None:
            raise ConfigError(
                f"{key}=auto has no rule sizing.{key}: give {key} a number, or add the rule "
                "(configs/preset/csv.yaml has those of vector data)"
            )
    return found


def sized_value(rule: Any, n: int, reference: float, kind: type) -> int | float | str:
    """One rule of the `sizing` table applied to `n` training items (module docstring);
    a choice's rule is its value."""
    if kind is str:
        if not isinstance(rule, str):
            raise ConfigError(f"a sizing rule of a choice is its value, got {rule!r}")
        return rule
    if isinstance(rule, int | float) and not isinstance(rule, bool):
        return kind(rule)  # a constant
    missing = [k for k in RULE_KEYS if k not in rule]
    if missing:
        raise ConfigError(f"a sizing rule needs {', '.join(RULE_KEYS)}; {missing[0]} is missing")
    value = float(rule["base"]) * (n / reference) ** float(rule["exponent"])
    multiple = rule["multiple"]
    if multiple is not None:
        value = float(multiple) * max(1, round(value / float(multiple)))
    value = min(max(value, float(rule["min"])), float(rule["max"]))
    return int(round(value)) if kind is int else round(value, 4)


class CappedSteps(int):
    """An `auto` step budget that `sizing.train.work_budget` lowered; `reason` says so."""

    reason: str = ""


#: the fewest steps the work budget leaves a run
MIN_CAPPED_STEPS = 200


def capped_steps(cfg: Any, chosen: dict[str, Any], budget: float, dims: int) -> int:
    """`chosen["train.max_steps"]`, lowered (as a `CappedSteps`) where the run would plan
    more work than `budget` (module docstring); never below `MIN_CAPPED_STEPS`."""

    def value(key: str) -> float:
        return float(chosen[key] if key in chosen else _get(cfg, key))

    steps = int(chosen["train.max_steps"])
    width = value("model.hidden_features")
    per_step = value("dataset.batch_size") * value("model.K") * width * (dims + width)
    most = max(MIN_CAPPED_STEPS, int(budget // per_step) // 100 * 100)
    if steps <= most:
        return steps
    capped = CappedSteps(most)
    capped.reason = (
        f"capped from {steps:,} by sizing.train.work_budget={show(budget)}, so that the run "
        "takes minutes on a CPU; set train.max_steps to train longer"
    )
    return capped


def resolve_auto(
    cfg: DictConfig,
    n_train: int,
    check: Callable[[DictConfig], DictConfig] | None = None,
    dims: int | None = None,
) -> tuple[DictConfig, dict[str, Any]]:
    """`cfg` with every `auto` replaced by its value for `n_train` items (then passed
    through `check` when given), and the chosen values (`{"model.K": 6, ...}`; empty,
    and `cfg` itself, when nothing was `auto`). `dims`: the values of an item, for the
    work budget (none without it)."""
    keys = auto_keys(cfg)
    if not keys:
        return cfg, {}
    sizing = cfg.sizing
    if (cfg.get("dataset") or {}).get("context") and sizing.get("context") is not None:
        sizing = OmegaConf.merge(sizing, sizing.context)  # its rules replace the same keys'
    reference = float(sizing.get("reference_items") or 1000)
    chosen = {
        key: sized_value(_get(sizing, key), n_train, reference, AUTO_KEYS[key]) for key in keys
    }
    budget = _get(sizing, "train.work_budget")
    if "train.max_steps" in chosen and budget is not None and dims is not None:
        chosen["train.max_steps"] = capped_steps(cfg, chosen, float(budget), dims)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    with open_dict(cfg):
        for key, value in chosen.items():
            section, name = key.split(".")
            cfg[section][name] = int(value) if isinstance(value, CappedSteps) else value
    return (cfg if check is None else check(cfg)), chosen


def describe_chosen(chosen: dict[str, Any]) -> str:
    """`auto for 398 items: model.K=6, ...` for the start-up line."""
    return ", ".join(
        f"{k}={int(v)} ({v.reason})"
        if isinstance(v, CappedSteps)
        else f"{k}={show(v) if isinstance(v, int | float) else v}"
        for k, v in chosen.items()
    )
