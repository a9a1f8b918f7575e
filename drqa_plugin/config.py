"""One config mechanism for the whole package: dataclasses built from YAML, with typo-proof keys.

:func:`from_dict` builds a (nested) dataclass from a mapping, checking every key
and coercing values to the annotated types (YAML lists become tuples where a
tuple is declared); :func:`load_yaml_config` reads a file with ``yaml.safe_load``
and applies dotted ``key=value`` overrides (``max_steps=20``, ``data.root=/x``).
Unknown keys and values of the wrong type are :class:`ConfigError` naming the key
(with a did-you-mean), so a typo fails loudly instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from drqa_plugin.errors import ConfigError, OptionError

T = TypeVar("T")


def check_keys(options: Mapping[str, object], known: Iterable[str], where: str,
               error: type[ConfigError] = OptionError) -> None:
    """Raise ``error`` naming every key of ``options`` not in ``known``, with a did-you-mean hint."""
    known = tuple(known)
    unknown = [key for key in options if key not in known]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), known, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise error(f"unknown option key {', '.join(hints)} in {where}; known keys: {', '.join(known)}")


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (``yaml.safe_load``: no Python tags).

    Raises:
        ConfigError: the file does not exist, is not valid YAML or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(loaded).__name__}")
    return loaded or {}


def load_yaml_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Build ``cls`` from a YAML file (or its defaults when ``path`` is None) plus ``key=value`` overrides."""
    raw = read_yaml_mapping(path) if path is not None else {}
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value)
    return from_dict(cls, raw)


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b=3"`` -> ``("a.b", 3)``; the value is parsed as a YAML scalar/list."""
    key, sep, text = item.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. max_steps=20)")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from exc
    return key, value


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type[T], raw: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and value types.

    Raises:
        ConfigError: naming the first unknown key or mistyped value (with its dotted path).
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.init}  # type: ignore[arg-type]  # a dataclass, checked by callers
    unknown = sorted(set(raw) - known)
    if unknown:
        named = [prefix + k + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(k, known, n=1))
                               else "") for k in unknown]
        raise ConfigError(f"unknown config key(s) {named}; valid keys here: {sorted(known)}")
    kwargs = {name: _coerce(hints[name], value, prefix + name) for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {exc}") from exc


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if isinstance(hint, type) and is_dataclass(hint):
        return from_dict(hint, value if value is not None else {}, key + ".")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if hint is Any:
        return value
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        items = [_coerce(args[0], v, key) for v in value] if args else list(value)
        return tuple(items) if origin is tuple else items
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # PyYAML reads "1e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{key} must be {hint.__name__}, got {value!r}")
        return value
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data view of a config (for YAML dumps and logs)."""
    return _plain(dataclasses.asdict(cfg))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def dump_yaml_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
