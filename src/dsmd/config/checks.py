"""Checking config values against their declared types, allowed values and ranges.

Each config dataclass declares what it accepts with its fields: the type annotation (``int``,
``float``, ``bool``, ``str``, ``Literal[...]`` for a fixed set of names, ``list[...]``,
``dict[str, ...]``, ``X | None``) and, for numbers, a range in the field's metadata
(:func:`at_least`, :func:`above`, :func:`between`). :func:`check_value` checks one value (and
turns an ``int`` given for a ``float`` into a float); :func:`check_fields` checks every field
of a dataclass. Every violation is one :class:`~dsmd.errors.DsmdError` line naming the key,
the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import field
from typing import Any, Literal

from dsmd.errors import DsmdError


def at_least(low: float, default: Any, **kwargs: Any) -> Any:
    """A field whose value (when not None) must be ``>= low``."""
    return field(default=default, metadata={"ge": low}, **kwargs)


def above(low: float, default: Any, **kwargs: Any) -> Any:
    """A field whose value (when not None) must be ``> low``."""
    return field(default=default, metadata={"gt": low}, **kwargs)


# Field metadata: config_to_dict leaves the field out while it holds its default, so a config that
# does not use a key added later is written, saved and hashed exactly as before the key existed.
OMITTED_AT_DEFAULT = {"omit_at_default": True}


def between(low: float, high: float, default: Any, high_open: bool = False, **kwargs: Any) -> Any:
    """A field whose value must lie in ``[low, high]`` (``[low, high)`` with ``high_open``)."""
    return field(default=default, metadata={"ge": low, ("lt" if high_open else "le"): high}, **kwargs)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in typing.get_args(tp) else "")
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _not_allowed(value: Any, allowed: tuple, key: str) -> DsmdError:
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return DsmdError(
        f"config key '{key}': {_show(value)} is not allowed; choose one of {', '.join(str(a) for a in allowed)}{hint}."
    )


def check_value(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against annotation ``tp`` (an int given for a float becomes a float).

    Raises:
        DsmdError: the value has another type, or is not among a ``Literal``'s values.
    """
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if not isinstance(value, str) or value not in allowed:
            raise _not_allowed(value, allowed, key)
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_value(value, arg, key)
            except DsmdError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise DsmdError(f"config key '{key}': expected {_type_name(tp)}, got {_show(value)}.")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise DsmdError(f"config key '{key}': expected {_type_name(tp)}, got {_show(value)}.")
        (arg,) = typing.get_args(tp)
        return [check_value(v, arg, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise DsmdError(f"config key '{key}': expected a mapping, got {_show(value)}.")
        _, varg = typing.get_args(tp)
        return {str(k): check_value(v, varg, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads 1e-4 (no dot) as a string; a number written that way is still a number.
        try:
            return float(value)
        except ValueError:
            pass
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, float),
        str: lambda v: isinstance(v, str),
    }.get(tp)
    if ok is not None and not ok(value):
        raise DsmdError(f"config key '{key}': expected {_type_name(tp)}, got {_show(value)}.")
    return value


def check_range(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    """Check a number (or each number of a list or mapping) against ``ge``/``gt``/``le``/``lt``.

    Raises:
        DsmdError: a value outside the range, or a float that is not finite.
    """
    if value is None or not any(k in meta for k in ("ge", "gt", "le", "lt")):
        return
    if isinstance(value, list | tuple):
        for v in value:
            check_range(v, meta, key)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            check_range(v, meta, f"{key}.{k}")
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise DsmdError(f"config key '{key}': must be a finite number, got {value}.")
    tests = {
        "ge": (lambda v, b: v >= b, "at least"),
        "gt": (lambda v, b: v > b, "greater than"),
        "le": (lambda v, b: v <= b, "at most"),
        "lt": (lambda v, b: v < b, "less than"),
    }
    for name, (test, _) in tests.items():
        if name in meta and not test(value, meta[name]):
            bounds = [f"{w} {meta[n]:g}" for n, (_, w) in tests.items() if n in meta]
            raise DsmdError(f"config key '{key}': must be {' and '.join(bounds)}, got {value}.")


def check_fields(obj: Any, section: str) -> None:
    """Check every field of dataclass ``obj`` (type, allowed values, range); nested dataclasses
    are left to their own ``__post_init__``.

    Raises:
        DsmdError: the first field that violates its declaration.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            continue
        key = f"{section}.{f.name}" if section else f.name
        value = check_value(getattr(obj, f.name), tp, key)
        object.__setattr__(obj, f.name, value)
        check_range(value, f.metadata, key)


def refuse(key: str, message: str) -> DsmdError:
    """A cross-field violation: ``config key 'KEY': MESSAGE``."""
    return DsmdError(f"config key '{key}': {message}")


def check_balancer_names(balancer: Any, losses: list[str]) -> None:
    """``balancer.static_weights`` (static mode) and ``balancer.priors`` name only losses that ``losses`` enables.

    Raises:
        DsmdError: naming the key and the losses it names that are not enabled.
    """
    if balancer.mode == "static":
        unknown = sorted(set(balancer.static_weights) - set(losses))
        if unknown:
            raise refuse(
                "balancer.static_weights",
                f"names {', '.join(unknown)}, which loss.losses ({', '.join(losses)}) does not enable.",
            )
    unknown = sorted(set(balancer.priors) - set(losses))
    if unknown:
        raise refuse(
            "balancer.priors",
            f"names {', '.join(unknown)}, which loss.losses ({', '.join(losses)}) does not enable. "
            "Add them to loss.losses, or drop them from balancer.priors (balancer.priors={} for none).",
        )
