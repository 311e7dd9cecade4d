"""Presets as plain data: YAML -> typed dataclasses, with `key.sub=value` overrides.

Unknown keys and wrong types fail at once with the key, the file, and the closest valid key.
Every number must be finite and inside the range its key declares (pipeline/config/fields.py): a
value out of range fails with the key, the value and what is allowed.
A preset may start from another with `base: other.yaml` (resolved next to the file).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.fields import check_ranges, field_name, key_name
from pipeline.config.schema import RunConfig
from pipeline.errors import UserError


def _valid_keys(cls) -> list[str]:
    return [key_name(f.name) for f in dataclasses.fields(cls)]


def _closest(key: str, options: list[str]) -> str:
    match = difflib.get_close_matches(key, options, n=1, cutoff=0.4)
    return f" Did you mean '{match[0]}'?" if match else f" Valid keys: {', '.join(options)}."


def _type_label(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, where: str) -> Any:
    """Check `value` against the annotation `tp`; int->float is the only silent conversion."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except UserError as e:
                errors.append(e)
        raise errors[0] if errors else UserError(f"{where}: expected {_type_label(tp)}, got {_shown(value)}.")
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"{where}: must be one of {', '.join(map(repr, args))}, got {_shown(value)}.")
        return value
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # `train.data=file.txt` on the command line means a one-element list
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {_shown(value)}.")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {_shown(value)}.")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a section (a mapping of keys), got {_shown(value)}.")
        return _build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true or false, got {_shown(value)}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-2 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{where}: expected a number, got {_shown(value)}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)  # 1e6 in YAML is a float
        raise UserError(f"{where}: expected an integer, got {_shown(value)}.")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{where}: expected a string, got {_shown(value)}.")
    return value


def _build(cls, data: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = {key_name(f.name): f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        key = str(key)
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise UserError(f"unknown key '{path}'.{_closest(key, list(names))}")
        kwargs[names[key]] = _coerce(value, hints[names[key]], path)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where or 'config'}: {e}") from None
    check_ranges(obj, where)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def _shown(value, limit: int = 80) -> str:
    """A value as an error line quotes it: a 5000-digit number or a pasted file is cut, the line stays one line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class _PresetLoader(yaml.SafeLoader):
    """YAML as presets need it: a key given twice in one mapping is refused (YAML keeps the last silently, so
    `lr: 1e-3` above a forgotten `lr: 100` would train with 100), and so are anchors and aliases (`&a`, `*a`):
    presets share settings through `base:`, and nested aliases are how a few lines expand to billions of values."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.MarkedYAMLError(problem="an alias (*name); presets share settings through `base:`, not "
                                       "YAML anchors and aliases", problem_mark=mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: SafeLoader's own check names it
                continue
            if repeated:
                raise yaml.MarkedYAMLError(problem=f"the key '{key}' is given twice in one mapping",
                                           problem_mark=key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, _bases: tuple[Path, ...] = ()) -> dict:
    """A preset as a dict, merged over the preset its `base:` names (and so on up). `_bases`: the files
    whose `base:` led here, so a loop (a.yaml -> b.yaml -> a.yaml) is refused instead of recursing forever."""
    if not path.is_file():
        what = ("is a folder, not a file" if path.is_dir() else
                "is not a regular file (a pipe, socket or device)" if path.exists() else "does not exist")
        raise UserError(f"config file {path} {what}. Presets live in configs/ (e.g. configs/tiny.yaml).")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text[:8192]:
        raise UserError(f"config file {path} is not a text file (binary or not UTF-8); --config needs a YAML "
                        "preset such as configs/tiny.yaml.")
    try:
        data = yaml.load(text, Loader=_PresetLoader)  # noqa: S506 - a SafeLoader
    except ValueError as e:  # a number past Python's 4300-digit limit
        raise UserError(f"config file {path}: a number too long to read ({str(e).split(';')[0]}).") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f", line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"config file {path}{at}: not valid YAML ({problem}).") from None
    if data is None:
        raise UserError(f"config file {path} is empty; a preset is a YAML mapping of sections "
                        "(run:, model:, train:, ...), e.g. `base: tiny.yaml` plus what differs.")
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: the top level must be a mapping of sections (run:, model:, train:, "
                        f"...), not a {type(data).__name__}.")
    base = data.pop("base", None)
    if base:
        chain, parent = (*_bases, path.resolve()), (path.parent / base).resolve()
        if parent in chain:
            loop = " -> ".join(p.name for p in (*chain, parent))
            raise UserError(f"config file {chain[0]}: its `base:` presets form a loop ({loop}); point the `base:` "
                            f"of {path.name} at a preset that does not lead back to {parent.name}, or remove it.")
        merged = read_yaml(parent, chain)
        _deep_update(merged, data)
        data = merged
    return data


def _deep_update(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise UserError(f"override '{text}' must look like key.sub=value (e.g. train.max_steps=200).")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError):  # ValueError: a number past Python's 4300-digit limit
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str], schema) -> None:
    """Write each `a.b=v` into the nested dict, checking the path against the schema."""
    for text in overrides:
        path, value = parse_override(text)
        node, cls = data, schema
        for i, part in enumerate(path):
            valid = _valid_keys(cls)
            if part not in valid:
                dotted = ".".join(path[: i + 1])
                raise UserError(f"unknown key '{dotted}' in override '{text}'.{_closest(part, valid)}")
            field_tp = typing.get_type_hints(cls)[field_name(part)]
            if i == len(path) - 1:
                node[part] = value
            else:
                sub = _dataclass_of(field_tp)
                if sub is None:
                    raise UserError(f"override '{text}': '{'.'.join(path[: i + 1])}' is a value, not a section.")
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise UserError(f"override '{text}': '{'.'.join(path[: i + 1])}' is not a section.")
                cls = sub


def _dataclass_of(tp):
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def load_config(path: str | Path, overrides: list[str] | None = None, schema=RunConfig):
    """Read a preset, apply overrides, and return the typed, validated config."""
    path = Path(path)
    data = read_yaml(path)
    data.setdefault("run", {}).setdefault("name", path.stem)
    overrides = list(overrides or [])
    apply_overrides(data, overrides, schema)
    try:
        return _build(schema, data, "")
    except UserError as e:
        # Say where the bad value came from: the command line or the preset file.
        keys = [text.split("=", 1)[0].strip() for text in overrides]
        overridden = any(re.match(rf"{re.escape(k)}\b", str(e)) for k in keys)
        raise UserError(f"command-line override {e}" if overridden else f"{path}: {e}") from None


def to_dict(cfg) -> dict:
    """The resolved config as plain data, with YAML spellings of keys (for manifests)."""
    if dataclasses.is_dataclass(cfg):
        return {key_name(f.name): to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg

