"""One config system: YAML or dict -> (nested) dataclasses, with unknown keys as errors (typos never pass)."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from retentionrl.errors import RetentionRLError

T = TypeVar("T")


class ConfigError(RetentionRLError):
    """A config that does not fit its schema."""


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; nested dataclass fields take nested mappings."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (allowed: {', '.join(sorted(fields))})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        ftype = hints[name]
        if dataclasses.is_dataclass(ftype):  # a section: a scalar or list here would only fail much later
            value = from_dict(ftype, value, f"{where}.{name}")
        else:
            value = _check_type(value, ftype, f"{where}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


def check_counts(obj: Any, where: str, names: tuple[str, ...], minimum: int = 1, optional: bool = False) -> None:
    """Raise naming ``where.<name>`` unless each field is an integer >= ``minimum`` (or None when ``optional``):
    a zero ``log_every`` would otherwise be a ZeroDivisionError after the run directory is written."""
    for name in names:
        v = getattr(obj, name)
        if optional and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"{where}.{name}: must be an integer >= {minimum}, got {v!r}")


def _check_type(value: Any, ftype: Any, where: str) -> Any:
    origin = typing.get_origin(ftype)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(ftype)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: value {value!r} does not fit {ftype}")
    if origin is typing.Literal:
        if value not in typing.get_args(ftype):
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, typing.get_args(ftype)))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(ftype) or (Any,)
        items = [_check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if ftype is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if ftype is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if ftype is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if ftype is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return value
    return value


#: ``dataclasses.field(metadata={OMIT_IF_DEFAULT: True})``: :func:`to_dict` leaves the field out while it holds its
#: default. For a field added to a config later: the saved and hashed form of every config that does not use it
#: stays what it was (a run's config.yaml still matches on resume, a grid cell keeps its key).
OMIT_IF_DEFAULT = "omit_if_default"


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain YAML/JSON-able values (fields marked :data:`OMIT_IF_DEFAULT` only when not default)."""
    out = _plain(dataclasses.asdict(obj))
    _drop_defaults(obj, out)
    return out


def _drop_defaults(obj: Any, out: dict[str, Any]) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get(OMIT_IF_DEFAULT) and f.default is not dataclasses.MISSING and value == f.default:
            del out[f.name]
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            _drop_defaults(value, out[f.name])


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping")
    return data


def load_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config with ``extends: OTHER.yaml`` resolved (relative to the file, recursively): the file's own
    keys are merged over its parent's, so a variant states only what differs (an ablation, another dataset)."""
    path = Path(path)
    data = load_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'extends' must be a file name, got {parent!r}")
    seen, base_path = (*_seen, path.resolve()), (path.parent / parent).resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle through {base_path.name}")
    return merge(load_config(base_path, seen), data)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: ``override`` wins; nested mappings are merged key by key."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
