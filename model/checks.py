"""Checking config values: the error type, typed building of a section, and range rules.

Torch-free and importing nothing else of ours, so that model.config and every method's own
config section (model/methods/options.py) can share it without importing each other.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple


class ConfigError(ValueError):
    """A configuration file or override the user must fix."""


class Rule(NamedTuple):
    """What one key allows: a test of its (already type-checked) value and how to say it."""

    ok: Callable[[Any], bool]
    allowed: str


def at_least(low: int) -> Rule:
    return Rule(lambda v: v >= low, f"at least {low}")


def between(low: int, high: int) -> Rule:
    return Rule(lambda v: low <= v <= high, f"between {low} and {high}")


def one_of(choices: Iterable[str]) -> Rule:
    names = tuple(choices)
    return Rule(lambda v: v in names, f"one of {', '.join(names)}")


def check_rules(node: Any, rules: dict[str, Rule], where: str = "") -> None:
    """Check every key of `rules` (dotted paths below `node`); a list is checked item by item."""
    for key, rule in rules.items():
        value: Any = node
        for part in key.split("."):
            value = getattr(value, part)
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            if not rule.ok(item):
                name = f"{where}{key}" if i is None else f"{where}{key}[{i}]"
                raise ConfigError(f"{name} must be {rule.allowed}, got {show(item)}")


def build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build a dataclass from a dict, refusing unknown keys with the path that holds them."""
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(
                f"unknown config key '{where}{key}'; known: {', '.join(sorted(known))}"
            )
        default = (
            known[key].default_factory()
            if known[key].default_factory is not dataclasses.MISSING
            else known[key].default
        )  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"'{where}{key}' must be a table")
            value = build(type(default), value, f"{where}{key}.")
        else:
            value = check_type(value, default, f"{where}{key}")
        kwargs[key] = value
    return cls(**kwargs)


def show(value: Any) -> str:
    """repr() cut to a length that keeps an error message on one readable line."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def check_type(value: Any, default: Any, name: str) -> Any:
    """Require a value of the default's type (ints widen to floats; list items checked too)."""
    if isinstance(default, float) and type(value) is int:
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(
                f"'{name}' is too large: an integer of {len(str(value))} digits"
            ) from None
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"'{name}' must be a list, got {show(value)}")
        if default:
            return [check_type(v, default[0], f"{name}[{i}]") for i, v in enumerate(value)]
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"'{name}' must be a table, got {show(value)}")
        return value
    if type(value) is not type(default):
        wanted = _TYPE_NAMES.get(type(default), type(default).__name__)
        raise ConfigError(f"'{name}' must be {wanted}, got {show(value)}")
    return value


def check_arguments(
    params: dict[str, Any], target: Callable[..., Any], where: str, label: str
) -> dict[str, Any]:
    """Check a table of keyword arguments against `target`'s signature: names, then types.

    A function's first parameter (the generator's output folder) is not the user's to set;
    a class's signature already leaves out `self`.
    """
    parameters = inspect.signature(target).parameters
    names = [
        name
        for i, (name, p) in enumerate(parameters.items())
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and not (i == 0 and inspect.isfunction(target))
    ]
    checked = {}
    for key, value in params.items():
        if key not in names:
            raise ConfigError(
                f"unknown key '{where}.{key}' for {label}; accepted: {', '.join(names) or 'none'}"
            )
        default = parameters[key].default
        if default is not inspect.Parameter.empty and default is not None:
            value = check_type(value, default, f"{where}.{key}")
        checked[key] = value
    return checked


class Section:
    """Base of a method's config section (a dataclass): its own rules and cross-key checks."""

    def rules(self) -> dict[str, Rule]:
        """Range and choice rules by key (dotted below the section)."""
        return {}

    def check(self, where: str) -> None:
        """Checks beyond one key's range; `where` is the section's prefix, e.g. 'dsmhn.'."""

    def check_run(self, config: Any) -> None:
        """Checks of the rest of the run's config (a model.config.RunConfig) this method needs,
        made when the config is read: before any data is prepared."""
