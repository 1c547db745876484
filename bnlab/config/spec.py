"""Sweep specs: a base config, a grid of dotted fields, and seeds, expanded into run configs.

Every cell is validated before anything runs, so a bad value anywhere in the grid is one line
naming the field and the value, and nothing is written.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from bnlab.config import (
    NAME_PATTERN,
    Config,
    Strict,
    apply_overrides,
    check_dotted_path,
    describe,
    read_yaml_mapping,
    safe_name,
    set_dotted,
    validate,
)
from bnlab.errors import ConfigError


class SweepSpec(Strict):
    name: str | None = None  # the sweep folder's name; default: the spec file's stem
    base: str | dict[str, Any] = Field(default_factory=dict)  # a config file (relative to the spec) or inline
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str | None) -> str | None:
        return None if name is None else safe_name(name)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds repeat (got {seeds})")
        return seeds


@dataclass(frozen=True)
class Sweep:
    """A spec resolved against its file: the name, the base and every run's config."""

    name: str
    spec_text: str  # the spec as given, recorded in the sweep folder
    base: Config
    axes: dict[str, list[Any]]  # dotted field -> values, in the spec's order
    seeds: list[int]
    configs: list[Config]  # grid order, seeds innermost

    @property
    def varied(self) -> list[str]:
        return [*self.axes, "seed"]


def _grid_key(values: dict[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, default=str)


def load_sweep(path: Path, overrides: Sequence[str] = ()) -> Sweep:
    """Read and expand a sweep spec; `overrides` apply to the base. ConfigError on any bad cell."""
    raw = read_yaml_mapping(path)
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{path}: {describe(err, SweepSpec)}") from None
    if isinstance(spec.base, str):
        base_path = (path.parent / spec.base) if not Path(spec.base).is_absolute() else Path(spec.base)
        base_raw = read_yaml_mapping(base_path)
        base_source = f"{path}: base {base_path}"
    else:
        base_raw = copy.deepcopy(spec.base)
        base_source = f"{path}: base"
    name = spec.name or path.stem
    if not re.match(NAME_PATTERN, name):
        raise ConfigError(f"{path}: name: the file's stem {name!r} is not a usable folder name; set `name:`")
    base_raw["name"] = name
    try:
        apply_overrides(base_raw, overrides)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    base = validate(base_raw, base_source)

    for field, values in spec.grid.items():
        try:
            check_dotted_path(field.split("."))
        except ConfigError as err:
            raise ConfigError(f"{path}: grid.{err}") from None
        if field in ("name", "seed"):
            raise ConfigError(f"{path}: grid.{field}: not a grid axis; use `seeds:` for seeds")
        if not values:
            raise ConfigError(f"{path}: grid.{field}: empty list; give at least one value")
        keys = [_grid_key(value) for value in values]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"{path}: grid.{field}: values repeat (got {values})")

    configs = [cfg for _cell, _seed, cfg in expand(base_raw, spec.grid, spec.seeds, str(path))]
    return Sweep(name=name, spec_text=path.read_text(), base=base, axes=dict(spec.grid),
                 seeds=list(spec.seeds), configs=configs)


def grid_cells(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every cell of a grid, one {field: value} per combination, the first axis outermost; [{}]
    for no axes. The one grid expansion: sweeps, claim suites and their strata all use it."""
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def expand(base_raw: Mapping[str, Any], axes: Mapping[str, Sequence[Any]], seeds: Sequence[int], source: str,
           fixed: Mapping[str, Any] | None = None,
           more_seeds: Callable[[dict[str, Any]], Sequence[int]] | None = None,
           ) -> list[tuple[dict[str, Any], int, Config]]:
    """(cell, seed, config) for every cell of `axes` and every seed (innermost): `base_raw` with the
    `fixed` fields, then the cell's, then the seed set, validated; `more_seeds(cell)` adds seeds
    to some cells. ConfigError naming `source`, the cell and the seed on the first invalid one."""
    runs = []
    for cell in grid_cells(axes):
        raw = copy.deepcopy(dict(base_raw))
        for dotted, value in [*(fixed or {}).items(), *cell.items()]:
            set_dotted(raw, dotted.split("."), value)
        extra = [seed for seed in (more_seeds(cell) if more_seeds else []) if seed not in seeds]
        for seed in [*seeds, *dict.fromkeys(extra)]:
            raw["seed"] = seed
            try:
                runs.append((cell, seed, Config.model_validate(raw)))
            except ValidationError as err:
                where = ", ".join(f"{field}={value!r}" for field, value in cell.items())
                raise ConfigError(f"{source}: grid cell {where or '(base)'} seed={seed}: {describe(err)}") from None
    return runs

