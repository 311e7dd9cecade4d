"""How a config key is declared: its default, one line of help, and the range its numbers must lie in.

    lr: float = setting(1e-3, "peak learning rate, reached after the warmup", range="> 0")

The help and the range sit on the field itself (dataclass metadata), so the loader's range check, each
stage's `--help` and docs/config.md read the one declaration. A range is a bound (`> 0`, `>= 0`, `< 1`),
an interval (`[0, 1]`, `(0, 1]`), an exact value (`-1`), or alternatives joined with `|`. None (an
optional key left unset) is always allowed; a list is checked element by element.
"""

from __future__ import annotations

import copy
import dataclasses
import keyword
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UserError

_BOUND = re.compile(r"^\s*(>=|>|<=|<)\s*(-?[\d.e+-]+)\s*$")
_INTERVAL = re.compile(r"^\s*([\[(])\s*(-?[\d.e+-]+)\s*,\s*(-?[\d.e+-]+)\s*([\])])\s*$")


def setting(default: Any, help: str, *, range: str | None = None) -> Any:
    """A config key: `default`, a one-line `help` (what it does, in which unit) and the `range` of its numbers.
    A malformed range fails here, when the schema is imported, not on a user's run."""
    if range is not None:
        for alternative in range.split("|"):
            _in_range(0.0, alternative)
    metadata = {"help": help, "range": range}
    if isinstance(default, (list, dict)):  # each config gets its own copy to change
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_name(key: str) -> str:
    # `tokenizer.from` reads better in YAML than `from_`; Python keywords get a trailing underscore.
    return key + "_" if keyword.iskeyword(key) else key


def key_name(field: str) -> str:
    return field[:-1] if field.endswith("_") and keyword.iskeyword(field[:-1]) else field


# --------------------------------------------------------------------------- ranges


def _in_range(value: float, spec: str) -> bool:
    if m := _BOUND.match(spec):
        op, bound = m.group(1), float(m.group(2))
        return {">": value > bound, ">=": value >= bound, "<": value < bound, "<=": value <= bound}[op]
    if m := _INTERVAL.match(spec):
        lo, hi = float(m.group(2)), float(m.group(3))
        above = value >= lo if m.group(1) == "[" else value > lo
        below = value <= hi if m.group(4) == "]" else value < hi
        return above and below
    try:
        return value == float(spec)
    except ValueError:
        raise ValueError(f"malformed range spec {spec!r}") from None


def range_words(spec: str) -> str:
    """`> 0 | -1` -> `> 0 or -1`; `[0, 1)` -> `in [0, 1)`: how the range reads in a sentence."""
    return " or ".join(f"in {a}" if a[:1] in "[(" else a for a in map(str.strip, spec.split("|")))


def check_ranges(obj, where: str) -> None:
    """Every number of a section finite, and inside its key's declared range. One line per failure."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = f"{where}.{key_name(f.name)}" if where else key_name(f.name)
        spec = f.metadata.get("range")
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            shown = value if isinstance(value, list) else v
            if not math.isfinite(v):
                raise UserError(f"{path}={shown}: must be a finite number.")
            if spec and not any(_in_range(v, alternative) for alternative in spec.split("|")):
                raise UserError(f"{path}={shown}: must be {range_words(spec)}.")


# --------------------------------------------------------------------------- describing the keys


@dataclass(frozen=True)
class Key:
    """One leaf key as a user sees it: `ppo.lora.r`, its type, default, range and help."""

    name: str
    type: Any
    default: Any
    help: str
    range: str | None


def sections_of(cls) -> list[tuple[str, type]]:
    """The (name, section class) pairs of a config class, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [(key_name(f.name), hints[f.name]) for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])]


def keys_of(cls, prefix: str = "") -> list[Key]:
    """Every leaf key of a section class, nested sections (`lora`) flattened into dotted names."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        name = prefix + key_name(f.name)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += keys_of(tp, name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append(Key(name, tp, default, f.metadata.get("help", ""), f.metadata.get("range")))
    return out


def allowed(key: Key) -> str:
    """What a key accepts beyond its type: its range in words, or its choices."""
    if key.range:
        return range_words(key.range)
    choices = [a for a in typing.get_args(key.type) if a is not type(None)]
    if typing.get_origin(key.type) is typing.Literal:
        return "/".join(map(str, choices))
    return ""


def about(cls) -> str:
    """The first paragraph of a section's docstring, on one line."""
    doc = (cls.__doc__ or "").strip()
    if doc.startswith(f"{cls.__name__}("):  # the signature dataclass writes when there is none
        return ""
    return " ".join(doc.split("\n\n")[0].split())


def show_value(value: Any) -> str:
    """A value as it is written in a preset or an override."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    if value == "":
        return '""'
    return str(value)


def show_type(tp) -> str:
    """`int`, `float or null`, `list of str`: the type of the values a user writes."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        shown = [show_type(a) for a in args if a is not type(None)]
        return " or ".join(shown) + (" or null" if type(None) in args else "")
    if origin is typing.Literal:  # the choices themselves are what `allowed` shows
        return type(args[0]).__name__
    if origin in (list, tuple):
        return f"list of {show_type(args[0])}" if args else "list"
    return getattr(tp, "__name__", str(tp))
