"""A small declarative loader: YAML mappings -> frozen dataclasses, with every problem reported.

Each dataclass field may carry a ``parse`` callable in its metadata (raising ``ValueError`` with
a reason) and a ``check`` callable for range rules. Nested dataclasses and lists of dataclasses
are recognised from the field's type. Problems are collected, not raised one by one, so that
``tailgate check-config`` can print all of them, each with its field path.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One reason a config is invalid, located by its dotted field path (``backends[1].url``)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path or '<root>'}: {self.reason}"


class ConfigError(ValueError):
    """Raised with every problem found in a config; ``str()`` gives one line per problem."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def field(
    default: Any = dataclasses.MISSING,
    *,
    parse: Callable[[Any], Any] | None = None,
    check: Callable[[Any], str | None] | None = None,
    default_factory: Any = dataclasses.MISSING,
    doc: str = "",
) -> Any:
    """A dataclass field with a parser (value -> typed value) and a check (-> error or None)."""
    metadata = {"parse": parse, "check": check, "doc": doc}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def load(cls: type[T], data: Any, path: str, problems: list[Problem]) -> T | None:
    """Build ``cls`` from ``data`` (a mapping or None for all defaults); append problems found."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(Problem(path, f"expected a mapping, got {_kind(data)}"))
        return None
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in known:
            hint = _closest(str(key), known)
            problems.append(Problem(join(path, str(key)), "unknown key" + hint))
    values: dict[str, Any] = {}
    ok = True
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        fpath = join(path, f.name)
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(Problem(fpath, "is required"))
                ok = False
            continue
        before = len(problems)
        value = _convert(hints[f.name], f.metadata, data[f.name], fpath, problems)
        if len(problems) > before:
            ok = False
            continue
        check = f.metadata.get("check")
        if check is not None:
            reason = check(value)
            if reason:
                problems.append(Problem(fpath, reason))
                ok = False
                continue
        values[f.name] = value
    if not ok:
        return None
    try:
        obj = cls(**values)
    except ValueError as exc:  # cross-field rules raised from __post_init__
        problems.append(Problem(path, str(exc)))
        return None
    return obj


def _convert(hint: Any, meta: Any, raw: Any, path: str, problems: list[Problem]) -> Any:
    parse = meta.get("parse") if meta else None
    if parse is not None:
        try:
            return parse(raw)
        except ValueError as exc:
            problems.append(Problem(path, str(exc)))
            return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        non_none = [a for a in args if a is not type(None)]
        if raw is None and len(non_none) < len(args):
            return None
        return _convert(non_none[0], None, raw, path, problems)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return load(hint, raw, path, problems)
    if origin in (tuple, list):
        if not isinstance(raw, list):
            problems.append(Problem(path, f"expected a list, got {_kind(raw)}"))
            return None
        item_hint = args[0] if args else Any
        items = [
            _convert(item_hint, None, item, join(path, i), problems) for i, item in enumerate(raw)
        ]
        return tuple(items)
    if origin is dict:
        if not isinstance(raw, dict):
            problems.append(Problem(path, f"expected a mapping, got {_kind(raw)}"))
            return None
        return {
            str(k): _convert(args[1], None, v, join(path, str(k)), problems) for k, v in raw.items()
        }
    return _scalar(hint, raw, path, problems)


def _scalar(hint: Any, raw: Any, path: str, problems: list[Problem]) -> Any:
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        problems.append(Problem(path, f"expected true or false, got {_kind(raw)}"))
    elif hint is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        problems.append(Problem(path, f"expected an integer, got {_kind(raw)}"))
    elif hint is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        problems.append(Problem(path, f"expected a number, got {_kind(raw)}"))
    elif hint is str:
        if isinstance(raw, str):
            return raw
        problems.append(Problem(path, f"expected a string, got {_kind(raw)}"))
    elif typing.get_origin(hint) is typing.Literal:
        choices = typing.get_args(hint)
        if raw in choices:
            return raw
        problems.append(
            Problem(path, f"must be one of {', '.join(map(str, choices))}; got {raw!r}")
        )
    else:
        return raw
    return None


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _closest(key: str, known: set[str]) -> str:
    import difflib

    match = difflib.get_close_matches(key, sorted(known), n=1)
    return (
        f" (did you mean {match[0]!r}?)" if match else f" (known keys: {', '.join(sorted(known))})"
    )


def positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


def in_range(low: float, high: float) -> Callable[[float], str | None]:
    def check(value: float) -> str | None:
        return None if low <= value <= high else f"must be between {low:g} and {high:g}"

    return check
