"""A sweep file: a base config, a search space over dotted hyper-parameter paths, a scheduler.

::

    name: regression-asha
    base: regression.yaml            # a config file (relative to this file) or a mapping
    metric: loss
    mode: min
    num_samples: 1                   # repeats of the grid, or random samples
    max_concurrent_trials: 2
    scaling: {num_workers: 1}        # per trial
    search:
      agents._default.learning_rate: {grid: [0.001, 0.003, 0.01]}
      batch_size: {choice: [16, 32]}
      hidden_dim: {randint: [16, 64]}
    search_alg: random               # or grid (the default, with grid entries), or optuna
    scheduler: {type: asha, max_t: 60, grace_period: 10, reduction_factor: 2}
    settings: {checkpoint_period: 10}

Everything is validated here, before Ray starts: unknown keys, distributions, every path
(naming the nearest valid one), and every value the search can produce, against the trainer's
own ``HyperParameters`` class.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from raytrainer.build import load_hyper_params
from raytrainer.errors import ConfigError
from raytrainer.params import DEFAULT_AGENT, HyperParameters, apply_overrides, read_config_file
from raytrainer.params.io import did_you_mean, format_validation_error
from raytrainer.params.tree import ParamsModel
from raytrainer.protocols import PROTOCOLS
from raytrainer.settings import ExperimentSettings, Scaling, sweep_settings

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
_MAX_GRID_CHECKED = 4096  # grids larger than this are checked value by value, not jointly


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ASHAConfig(_Strict):
    """Asynchronous successive halving: stop weak trials early, measured in iterations."""

    type: Literal["asha"]
    max_t: PositiveInt = Field(description="Iterations a trial may run at most.")
    grace_period: PositiveInt = Field(1, description="Iterations before a trial can be stopped.")
    reduction_factor: float = Field(2, gt=1, description="Keep 1/reduction_factor per rung.")

    @model_validator(mode="after")
    def _grace_within_max(self) -> ASHAConfig:
        if self.grace_period > self.max_t:
            raise ValueError(f"grace_period={self.grace_period} must be <= max_t={self.max_t}")
        return self


class PBTConfig(_Strict):
    """Population-based training: poor trials copy a good trial's checkpoint, then mutate."""

    type: Literal["pbt"]
    perturbation_interval: PositiveInt = Field(description="Iterations between exploits.")
    hyperparam_mutations: dict[str, dict[str, Any]] = Field(
        description="Dotted path -> distribution ({choice: [...]}, {loguniform: [a, b]}, ...)."
    )
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="Bottom share that exploits.")
    resample_probability: float = Field(0.25, ge=0, le=1, description="Resample, not perturb.")


class FIFOConfig(_Strict):
    """No scheduler: every trial runs to the end."""

    type: Literal["fifo"] = "fifo"


class SweepConfig(_Strict):
    """The sweep file, as read."""

    name: str = Field(description="Sweep name: the folder under the storage root, trial ids.")
    base: str | dict[str, Any] = Field(description="Base config: a file path or a mapping.")
    metric: str = Field(description="The metric the sweep optimises; every report carries it.")
    mode: Literal["min", "max"] = Field(description="Whether lower or higher is better.")
    search: dict[str, dict[str, Any]] = Field(default_factory=dict)
    num_samples: PositiveInt = 1
    max_concurrent_trials: PositiveInt | None = None
    scaling: dict[str, Any] = Field(default_factory=dict)
    search_alg: Literal["grid", "random", "optuna"] = "grid"
    scheduler: ASHAConfig | PBTConfig | FIFOConfig = Field(
        default_factory=FIFOConfig, discriminator="type"
    )
    settings: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = Field(None, description="Seed of the search algorithm's sampling.")

    @model_validator(mode="after")
    def _name_is_a_folder(self) -> SweepConfig:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ValueError("name must be letters, digits, '_', '.', '-' (it names a folder)")
        return self


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A validated sweep: what the Tune runner needs, nothing left to check.

    Attributes
    ----------
    config : SweepConfig
        The sweep file as read.
    base : dict
        The base hyper-parameters (overrides applied), as plain values.
    hyper_params : HyperParameters
        The base validated: the trainer's class, its default values.
    scaling : Scaling
        Per-trial workers and resources.
    settings : ExperimentSettings
        Settings shared by every trial (each gets its own run id).
    """

    config: SweepConfig
    base: dict[str, Any]
    hyper_params: HyperParameters
    scaling: Scaling
    settings: ExperimentSettings

    @property
    def name(self) -> str:
        """The sweep's name."""
        return self.config.name

    @property
    def varied_paths(self) -> list[str]:
        """The dotted paths the search or PBT varies, in file order."""
        mutations = getattr(self.config.scheduler, "hyperparam_mutations", {})
        return list(dict.fromkeys([*self.config.search, *mutations]))

    def target_iterations(self, values: Mapping[str, Any]) -> int:
        """Where a trial with ``values`` ends unless the scheduler stops it earlier."""
        end = self.trial_hyper_params(values).num_iterations
        return min(end, getattr(self.config.scheduler, "max_t", end))

    def trial_hyper_params(self, values: Mapping[str, Any]) -> HyperParameters:
        """The hyper-parameters of one trial: the base with ``values`` at their dotted paths."""
        return load_hyper_params(self.base, [override(p, v) for p, v in values.items()])


def load_sweep(
    path: str | Path | Mapping[str, Any],
    overrides: Iterable[str] = (),
    settings: ExperimentSettings | None = None,
    fixed: Iterable[str] = (),
) -> Sweep:
    """Read and validate a sweep file; ``overrides`` are ``dotted.path=value`` on the base.

    The trials' settings are ``settings`` (default: the defaults) updated with the file's
    ``settings`` section, except for the fields named in ``fixed`` (command-line flags win).

    Raises
    ------
    ConfigError
        Naming the key, for anything wrong in the file, its base config, its paths or values.
    """
    source = str(path) if isinstance(path, str | Path) else "sweep"
    data = read_config_file(path) if isinstance(path, str | Path) else dict(path)
    try:
        config = SweepConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(exc, source).replace("hyper-parameters in", "sweep")
        ) from None
    if isinstance(config.base, str):
        base_path = Path(config.base)
        if not base_path.is_absolute() and isinstance(path, str | Path):
            base_path = Path(path).parent / base_path
        base = read_config_file(base_path)
    else:
        base = dict(config.base)
    base = apply_overrides(base, overrides)
    hyper_params = load_hyper_params(base)
    try:
        scaling = Scaling(**config.scaling)
    except TypeError as exc:
        raise ConfigError(f"invalid sweep {source}: scaling: {exc}") from None
    if isinstance(scaling.num_workers, tuple):
        raise ConfigError(
            f"invalid sweep {source}: scaling.num_workers={list(scaling.num_workers)} is a "
            "range, but a trial reserves a fixed number of workers; give one count."
        )
    if hyper_params.batch_size % scaling.num_workers:
        raise ConfigError(
            f"invalid sweep {source}: batch_size={hyper_params.batch_size} must divide by "
            f"scaling.num_workers={scaling.num_workers}."
        )
    if (
        isinstance(config.scheduler, ASHAConfig)
        and config.scheduler.max_t > hyper_params.num_iterations
    ):
        raise ConfigError(
            f"invalid sweep {source}:\n  scheduler.max_t: {config.scheduler.max_t} is more than "
            f"the base's num_iterations={hyper_params.num_iterations}"
        )
    settings = _settings(config, settings or ExperimentSettings(), set(fixed), source)
    sweep = Sweep(config, base, hyper_params, scaling, settings)
    _check_space(sweep, source)
    return sweep


def _settings(
    config: SweepConfig, settings: ExperimentSettings, fixed: set[str], source: str
) -> ExperimentSettings:
    names = sweep_settings()
    unknown = sorted(set(config.settings) - names)
    if unknown:
        if unknown[0] in {f.name for f in dataclasses.fields(ExperimentSettings)}:
            reason = "not a sweep's to set (a trial gets its device from Ray; Tune decides what "
            reason += "each trial loads)"
        else:
            reason = f"unknown setting{did_you_mean(unknown[0], names)}"
        raise ConfigError(f"invalid sweep {source}:\n  settings.{unknown[0]}: {reason}")
    if "run_id" in config.settings:
        raise ConfigError(
            f"invalid sweep {source}:\n  settings.run_id: each trial's run id is "
            "<sweep name>-<trial id>; remove it."
        )
    try:
        from_file = {k: v for k, v in config.settings.items() if k not in fixed}
        settings = dataclasses.replace(settings, **from_file)
    except ConfigError as exc:
        raise ConfigError(f"invalid sweep {source}: settings: {exc}") from None
    if isinstance(config.scheduler, PBTConfig) and settings.num_to_keep is not None:
        # A PBT trial restores a donor's checkpoint; retention must never delete it first.
        settings = dataclasses.replace(settings, num_to_keep=None)
    return dataclasses.replace(settings, wandb_group=settings.wandb_group or config.name)


def _check_space(sweep: Sweep, source: str) -> None:
    config = sweep.config
    valid = valid_paths(type(sweep.hyper_params), sweep.hyper_params)
    spaces = {f"search.{p}": d for p, d in config.search.items()}
    if isinstance(config.scheduler, PBTConfig):
        if not config.scheduler.hyperparam_mutations:
            raise ConfigError(f"invalid sweep {source}:\n  scheduler.hyperparam_mutations: empty")
        spaces |= {
            f"scheduler.hyperparam_mutations.{p}": d
            for p, d in config.scheduler.hyperparam_mutations.items()
        }
        if any("grid" in d for d in config.scheduler.hyperparam_mutations.values()):
            raise ConfigError(
                f"invalid sweep {source}:\n  scheduler.hyperparam_mutations: use choice, "
                "uniform, loguniform or randint (PBT cannot mutate along a grid)"
            )
    grid_used = any("grid" in d for d in config.search.values())
    if config.search_alg == "optuna":
        if grid_used:
            raise ConfigError(f"invalid sweep {source}:\n  search: optuna takes no grid entries")
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"invalid sweep {source}:\n  search_alg: optuna is not installed "
                "(pip install optuna)"
            ) from None
    candidates: dict[str, list[Any]] = {}
    for where, dist in spaces.items():
        path = where.split(".", 1)[1] if where.startswith("search.") else where.split(".", 2)[2]
        if path not in valid:
            hint = did_you_mean(path, valid, cutoff=0.5)
            raise ConfigError(f"invalid sweep {source}:\n  {where}: not a hyper-parameter{hint}")
        candidates.setdefault(path, []).extend(_distribution_values(dist, f"{source}: {where}"))
    # Every value the search can produce, on top of the base. Grids jointly when small.
    paths = list(candidates)
    combos = 1
    for values in candidates.values():
        combos *= len(values)
    rows: Iterable[tuple[Any, ...]]
    if combos <= _MAX_GRID_CHECKED:
        rows = itertools.product(*(candidates[p] for p in paths))
    else:
        rows = (
            (v if q == p else candidates[q][0] for q in paths) for p in paths for v in candidates[p]
        )
    for row in rows:
        values = dict(zip(paths, row, strict=True))
        try:
            sweep.trial_hyper_params(values)
        except ConfigError as exc:
            raise ConfigError(
                f"invalid sweep {source}: the variant {values} fails:\n{exc}"
            ) from None


def _distribution_values(dist: Mapping[str, Any], where: str) -> list[Any]:
    """The values to validate for one distribution: all listed ones, or both bounds."""
    if len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        raise ConfigError(
            f"invalid sweep {where}: {dict(dist)!r} must be one of "
            + ", ".join(f"{{{d}: ...}}" for d in DISTRIBUTIONS)
        )
    kind, arg = next(iter(dist.items()))
    if kind in ("grid", "choice"):
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"invalid sweep {where}: {kind} takes a non-empty list")
        return list(arg)
    if not (
        isinstance(arg, list)
        and len(arg) == 2
        and all(isinstance(a, int | float) and not isinstance(a, bool) for a in arg)
        and arg[0] < arg[1]
    ):
        raise ConfigError(f"invalid sweep {where}: {kind} takes [low, high] with low < high")
    if kind == "loguniform" and arg[0] <= 0:
        raise ConfigError(f"invalid sweep {where}: loguniform needs low > 0")
    if kind == "randint":
        if not all(isinstance(a, int) for a in arg):
            raise ConfigError(f"invalid sweep {where}: randint takes integer bounds")
        return [arg[0], arg[1] - 1]  # Tune's randint excludes the upper bound
    return list(arg)


def valid_paths(params_cls: type[HyperParameters], base: HyperParameters) -> set[str]:
    """Every dotted path a sweep may set: leaves of the tree, per-agent sections included."""
    agents = [DEFAULT_AGENT, *PROTOCOLS.get(base.interaction_protocol).agent_names]
    return set(_leaves(params_cls, "", agents))


def _leaves(model: type[BaseModel], prefix: str, agents: list[str]) -> Iterable[str]:
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = info.annotation
        nested = _model_of(annotation)
        if name == "agents" and prefix == "":
            agent_cls = model._agent_cls()  # type: ignore[attr-defined]
            for agent in agents:
                yield from _leaves(agent_cls, f"agents.{agent}.", agents)
        elif nested is not None:
            yield from _leaves(nested, f"{path}.", agents)
        else:
            yield path


def _model_of(annotation: Any) -> type[ParamsModel] | None:
    candidates = getattr(annotation, "__args__", None) or (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, ParamsModel):
            return candidate
    return None


def override(path: str, value: Any) -> str:
    """The ``dotted.path=value`` override that sets ``value`` exactly (JSON is YAML)."""
    return f"{path}={json.dumps(value)}"
