"""Sweep files: a base config, overrides for every run, seeds, and a grid or named variants.

::

    base: offline_benchmark          # a packaged config name or a YAML path
    overrides: [train.epochs=4]      # applied to every run (a list of key=value, or a mapping)
    seeds: [0, 1, 2]                 # train.seed of each repeat
    grid:                            # the product of the axes' values ...
      loss.temperature: [0.05, 0.2, 0.5, 1.0]
    variants:                        # ... or named lists of overrides (not both)
      all four: []
      without CD: [loss.losses=[fd, sd, hnd]]
    out_dir: sweeps/table7           # the table, the plots and (by default) the runs
    runs: sweeps/offline/runs        # where runs live (default OUT/runs); runs of identical
                                     # configs are shared between the sweeps that name the same folder

Every run's config is built and checked when the sweep is read (:func:`load_sweep`): a key that
does not exist or a value outside its allowed set stops the sweep before anything runs, naming
the variant.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dsmd.config import RunConfig, config_to_dict, load_config, with_overrides
from dsmd.config.io import CONFIG_DIR, read_yaml
from dsmd.errors import DsmdError

SWEEP_DIR = CONFIG_DIR / "sweeps"
SWEEP_KEYS = {"base", "overrides", "seeds", "grid", "variants", "out_dir", "runs", "description"}


@dataclass
class Run:
    """One run of a sweep: a variant at a seed, its checked config and its folder."""

    variant: str
    seed: int
    overrides: list[str]
    cfg: RunConfig
    folder: Path
    sweep: str = ""


@dataclass
class Sweep:
    """A sweep file, read and checked (see the module docstring)."""

    name: str
    path: Path
    base: str
    variants: dict[str, list[str]]
    seeds: list[int]
    out_dir: Path
    runs_dir: Path
    axes: dict[str, list[Any]] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)
    description: str = ""


def _as_overrides(value: Any, where: str) -> list[str]:
    """A list of ``key=value`` strings from a list of them or a mapping."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{k}={_yaml(v)}" for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
        return list(value)
    raise DsmdError(f"{where} must be a list of key=value strings or a mapping of keys to values.")


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _label(value: Any) -> str:
    return _yaml(value) if not isinstance(value, str) else value


def resolve_sweep_path(path: str | Path) -> Path:
    """A sweep YAML file, or the name of one that ships with dsmd (``offline_table5``)."""
    p = Path(path)
    if p.is_file():
        return p
    packaged = SWEEP_DIR / f"{p.name}.yaml"
    if p.suffix == "" and len(p.parts) == 1 and packaged.is_file():
        return packaged
    names = ", ".join(sorted(q.stem for q in SWEEP_DIR.glob("*.yaml")))
    raise DsmdError(f"sweep file not found: {path}. Give a YAML file or a packaged sweep: {names}.")


def _variants(data: dict[str, Any], where: Path) -> tuple[dict[str, list[str]], dict[str, list[Any]]]:
    if ("grid" in data) == ("variants" in data):
        raise DsmdError(f"{where}: give either grid: (axes of values) or variants: (named override lists).")
    if "variants" in data:
        variants = data["variants"]
        if not isinstance(variants, dict) or not variants:
            raise DsmdError(f"{where}: variants: must map names to lists of key=value overrides.")
        return {str(k): _as_overrides(v, f"{where}: variant '{k}'") for k, v in variants.items()}, {}
    grid = data["grid"]
    if not isinstance(grid, dict) or not grid or any(not isinstance(v, list) or not v for v in grid.values()):
        raise DsmdError(f"{where}: grid: must map each key to a non-empty list of values.")
    variants = {}
    for values in itertools.product(*grid.values()):
        name = ", ".join(f"{k}={_label(v)}" for k, v in zip(grid, values, strict=True))
        variants[name] = [f"{k}={_yaml(v)}" for k, v in zip(grid, values, strict=True)]
    return variants, {str(k): list(v) for k, v in grid.items()}


def _changes(data: Any, default: Any) -> Any:
    """The parts of ``data`` that differ from ``default`` (nested dicts compared key by key)."""
    if isinstance(data, dict) and isinstance(default, dict):
        diff = {k: _changes(v, default.get(k)) for k, v in data.items() if v != default.get(k)}
        return {k: v for k, v in diff.items() if v != {}}
    return data


def run_hash(cfg: RunConfig) -> str:
    """The identity of a run: what its resolved config changes from the defaults, without where
    it is written. A field added to the config later (with a default) keeps every hash."""
    data = _changes(config_to_dict(cfg), config_to_dict(RunConfig()))
    data.pop("out_dir", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def load_sweep(path: str | Path, extra: list[str] | None = None) -> Sweep:
    """Read a sweep file and build every run's config (``extra`` ``key=value`` apply to all).

    Raises:
        DsmdError: an unknown sweep key, a malformed grid or variant, or a run whose config is
            refused (the message names the variant and the key).
    """
    path = resolve_sweep_path(path)
    data = read_yaml(path)
    unknown = sorted(set(data) - SWEEP_KEYS)
    if unknown:
        raise DsmdError(f"{path}: unknown sweep key {unknown[0]!r}. Valid keys: {', '.join(sorted(SWEEP_KEYS))}.")
    if "base" not in data or not isinstance(data["base"], str):
        raise DsmdError(f"{path}: base: must name a config (a packaged config name or a YAML path).")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise DsmdError(f"{path}: seeds: must be a non-empty list of non-negative integers.")
    variants, axes = _variants(data, path)
    common = [*_as_overrides(data.get("overrides"), f"{path}: overrides"), *(extra or [])]
    out_dir = Path(data.get("out_dir") or f"sweeps/{path.stem}")
    runs_dir = Path(data.get("runs") or out_dir / "runs")
    sweep = Sweep(
        path.stem,
        path,
        data["base"],
        variants,
        list(seeds),
        out_dir,
        runs_dir,
        axes,
        description=str(data.get("description", "")),
    )
    base = load_config(data["base"], common)
    for name, overrides in variants.items():
        for seed in seeds:
            try:
                cfg = with_overrides(base, [*overrides, f"train.seed={seed}"])
            except DsmdError as exc:
                raise DsmdError(f"{path}: variant '{name}': {exc}") from exc
            folder = runs_dir / run_hash(cfg)
            cfg = with_overrides(cfg, [f"out_dir={folder}"])
            sweep.runs.append(Run(name, seed, overrides, cfg, folder, sweep.name))
    return sweep
