"""Reading, overriding and writing run configs.

``load_config("run.yaml", ["train.lr=3e-4"])`` reads the file (or a packaged config by name),
applies the overrides and builds a checked :class:`~dsmd.config.schema.RunConfig`.
:func:`with_overrides` is the one way to change a config by ``key=value`` strings (the CLI,
``dsmd train --resume`` and ``dsmd eval --checkpoint`` all use it). Override values are parsed
as YAML, so ``true``, ``[cd, fd]`` and ``null`` work. The resolved config is saved with each
run and inside each checkpoint (:func:`config_to_dict`), so a model can be rebuilt from the
file alone.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

from dsmd.config.checks import check_value
from dsmd.config.schema import RunConfig
from dsmd.errors import DsmdError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-serialisable dict of a config dataclass.

    Fields declared with :data:`~dsmd.config.checks.OMITTED_AT_DEFAULT` are left out while they
    hold their default (:func:`from_dict` puts the default back), so a config that does not use
    a later key is written, saved and hashed exactly as before that key existed.
    """
    data = dataclasses.asdict(cfg)
    _drop_defaults(cfg, data)
    return data


def _drop_defaults(cfg: Any, data: dict[str, Any]) -> None:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("omit_at_default"):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            if value == default:
                del data[f.name]
                continue
        if dataclasses.is_dataclass(value):
            _drop_defaults(value, data[f.name])


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys by name.

    Raises:
        DsmdError: an unknown key, a section that is not a mapping, or any value its field
            refuses (type, allowed values, range).
    """
    if not isinstance(data, dict):
        raise DsmdError(f"config section '{prefix.rstrip('.') or 'root'}' must be a mapping, got {data!r}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise DsmdError(f"unknown config key '{prefix}{key}'. Valid keys here: {', '.join(sorted(names))}.")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, {} if value is None else value, f"{prefix}{key}.")
        else:
            kwargs[key] = check_value(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def _parse_value(override: str, raw: str) -> Any:
    if raw == "":
        return ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or _one_line(exc)
        raise DsmdError(
            f"override '{override}': the value is not valid YAML ({problem}). Write lists "
            "as [a, b], and quote values with special characters."
        ) from exc
    if isinstance(value, str):
        # YAML reads 1e-4 as a string; numbers written that way are still numbers.
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return value


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one ``a.b.c=value`` override to a nested dict in place (no checks yet)."""
    if "=" not in override:
        raise DsmdError(f"override '{override}' must look like key=value (e.g. train.lr=3e-4).")
    key, raw = override.split("=", 1)
    value = _parse_value(override, raw)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise DsmdError(f"override '{override}': '{part}' is not a section.")
    node[parts[-1]] = value


def with_overrides(cfg: RunConfig | dict[str, Any], overrides: list[str] | None) -> RunConfig:
    """A new, checked config: ``cfg`` with ``key=value`` ``overrides`` applied in order.

    Raises:
        DsmdError: an override that is not ``key=value`` or not YAML, an unknown key, or a value
            the config refuses.
    """
    data = config_to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    for override in overrides or []:
        apply_override(data, override)
    return from_dict(RunConfig, data)


def packaged_configs() -> list[str]:
    """Names of the configs that ship with dsmd (``demo``, ``paper_f30k_beit3_base``, ...)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def packaged_config(name: str) -> Path:
    """Path of a config that ships with the package (``dsmd/configs/NAME.yaml``)."""
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise DsmdError(f"no packaged config '{name}'. Available: {', '.join(packaged_configs())}.")
    return path


def resolve_config_path(path: str | Path) -> Path:
    """A YAML file, or the name of a config that ships with dsmd (``paper_f30k_beit3_base``).

    Raises:
        DsmdError: neither a file nor a packaged config of that name exists.
    """
    p = Path(path)
    if p.is_file():
        return p
    packaged = CONFIG_DIR / f"{p.name}.yaml"
    if p.suffix == "" and len(p.parts) == 1 and packaged.is_file():
        return packaged
    raise DsmdError(
        f"config file not found: {path}. Give a YAML file or a packaged config: {', '.join(packaged_configs())}."
    )


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file's mapping (``yaml.safe_load``: data only, never objects).

    Raises:
        DsmdError: unreadable, not UTF-8, not YAML, or not a mapping.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DsmdError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from exc
    except yaml.YAMLError as exc:
        raise DsmdError(f"config file {path} is not valid YAML: {_one_line(exc)}") from exc
    except OSError as exc:
        raise DsmdError(f"cannot read config file {path}: {exc.strerror or exc}.") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DsmdError(
            f"config file {path} must hold a mapping of sections (data:, train:, ...), not a {type(data).__name__}."
        )
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or start from the defaults) and apply ``key=value`` overrides.

    Raises:
        DsmdError: the file is missing or not YAML, a key does not exist, a value has the
            wrong type or is not allowed.
    """
    data = read_yaml(resolve_config_path(path)) if path is not None else {}
    return with_overrides(data, overrides)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from dsmd.runtime.files import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
