"""Reading one mapping of the configuration file, with its field path.

``Fields`` wraps a mapping and knows where it sits in the file
(``supervisor.workers[0].limits``), so every check can raise a ``ConfigError``
that names the exact field and shows the value in one short line.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
from collections.abc import Iterable

from monoceros.errors import ConfigError
from monoceros.units import parse_duration, parse_size

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Fields:
    """One mapping of the file, with its field path for error messages."""

    def __init__(self, data: dict, path: str, known: Iterable[str]):
        self.data = data
        self.path = path
        known = tuple(known)
        for key in data:
            if not isinstance(key, str):
                raise ConfigError(
                    path, f"field names must be strings, got {describe(key)}"
                )
            if key not in known:
                raise ConfigError(self.at(key), _unknown_field(key, known))

    @classmethod
    def of(cls, value: object, path: str, known: Iterable[str]) -> Fields:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {describe(value)}")
        return cls(value, path, known)

    def at(self, key: str) -> str:
        name = key if _PLAIN_KEY.fullmatch(key) else f"[{key!r}]"
        if not self.path:
            return name
        return f"{self.path}{'' if name.startswith('[') else '.'}{name}"

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.at(key), one_line(message))

    def get(self, key: str, *, required: bool = False) -> object:
        value = self.data.get(key)
        if value is None and required:
            raise self.error(key, "required field is missing")
        return value

    def section(
        self, key: str, known: Iterable[str], *, required: bool = False
    ) -> Fields:
        value = self.get(key, required=required)
        return Fields.of({} if value is None else value, self.at(key), known)

    def list(self, key: str, *, required: bool = False) -> list:
        value = self.get(key, required=required)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(key, f"expected a list, got {describe(value)}")
        return value

    def text(
        self, key: str, default: str | None = None, *, required: bool = False
    ) -> str | None:
        value = self.get(key, required=required)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {describe(value)}")
        _check_text(self.at(key), value)
        if not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def integer(self, key: str, default: int, low: int, high: int | None = None):
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {describe(value)}")
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"from {low} to {high}"
            raise self.error(key, f"must be an integer {bounds}, got {show(value)}")
        return value

    def ratio(self, key: str, default: float) -> float:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected a number, got {describe(value)}")
        if not 0 <= value <= 1:  # also refuses NaN
            raise self.error(key, f"must be a number from 0 to 1, got {show(value)}")
        return float(value)

    def duration(self, key: str, default: float, *, positive=False) -> float:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.error(
                key, f"expected a duration like '15s', got {describe(value)}"
            )
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None
        if positive and seconds == 0:
            raise self.error(key, f"must be a duration > 0, got {show(value)}")
        return seconds

    def size(self, key: str, default: int) -> int:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self.error(
                key, f"expected a size like '512Mi', got {describe(value)}"
            )
        try:
            return parse_size(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(key, default)
        for choice in choices:
            if choice.lower() == value.lower():
                return choice
        raise self.error(key, f"must be one of {', '.join(choices)}, got {show(value)}")

    def port(self, key: str, default: int, *, low: int = 1) -> int:
        return self.integer(key, default, low, 65535)

    def file_path(self, key: str, base_dir: str, *, required=False) -> str | None:
        value = self.text(key, required=required)
        if value is None:
            return None
        return os.path.normpath(os.path.join(base_dir, value))


def scalar_text(field: str, value: object) -> str:
    """A YAML scalar as the worker will see it in its argv or environment."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float | str):
        text = value if isinstance(value, str) else repr(value)
    else:
        raise ConfigError(
            field, f"expected a string or a number, got {describe(value)}"
        )
    _check_text(field, text)
    return text


def _check_text(field: str, text: str) -> None:
    # Strings end up in argv, the environment or file names: the OS takes
    # neither a NUL nor text that cannot be encoded.
    if "\x00" in text:
        raise ConfigError(field, "must not contain a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(field, "contains text that cannot be encoded") from None


def _unknown_field(key: str, known: Iterable[str]) -> str:
    known = list(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown field; did you mean {close[0]!r}?"
    if not known:
        return "unknown field"
    return f"unknown field; expected one of {', '.join(known)}"


def describe(value: object) -> str:
    """The YAML type of a value and the value: ``string 'four'``, ``null``."""
    if value is None:
        return "null"
    return f"{_yaml_type(value)} {show(value)}"


def _yaml_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    for kind, name in ((int, "integer"), (float, "float"), (str, "string")):
        if isinstance(value, kind):
            return name
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def show(value: object, limit: int = 60) -> str:
    """A short, one-line rendering of a value for an error message."""
    text = _render(value, depth=0)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _render(value: object, depth: int) -> str:
    # Bounded in depth and width: a YAML alias bomb shares objects, and a
    # full repr of one could take longer than the rest of Monoceros's start.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value) if value.bit_length() < 200 else "<a very large integer>"
    if isinstance(value, float | str):
        return repr(value[:80] if isinstance(value, str) else value)
    if isinstance(value, dict | list | tuple):
        if depth >= 2:
            return "{...}" if isinstance(value, dict) else "[...]"
        items = list(
            itertools.islice(value.items() if isinstance(value, dict) else value, 4)
        )
        if isinstance(value, dict):
            shown = [f"{_render(k, 2)}: {_render(v, depth + 1)}" for k, v in items]
        else:
            shown = [_render(v, depth + 1) for v in items]
        more = ", ..." if len(value) > len(items) else ""
        body = ", ".join(shown) + more
        return "{" + body + "}" if isinstance(value, dict) else "[" + body + "]"
    return one_line(repr(value)[:80])


def one_line(text: str) -> str:
    """Escape anything that would break the message over lines."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
