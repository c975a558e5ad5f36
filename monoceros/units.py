"""Units of the configuration file: Go durations, memory sizes, port templates.

The original Monoceros is written in Go, so its files use Go's duration
syntax (``500ms``, ``1h30m``) and Go's ``text/template`` for the port
argument (``{{.Port}}``). These parsers accept the same texts and raise
``ValueError`` with a one-line message that quotes the bad input; the
configuration loader adds the field path.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

# Go's time.Duration is an int64 of nanoseconds; larger values overflow there,
# and a timer that far away is a typo here.
_MAX_NANOSECONDS = 2**63 - 1
_MAX_BYTES = 2**63 - 1

_NS_PER_UNIT = {
    "ns": 1,
    "us": 10**3,
    "\u00b5s": 10**3,  # MICRO SIGN, as Go accepts
    "\u03bcs": 10**3,  # GREEK SMALL LETTER MU, as Go accepts
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")

_BYTES_PER_UNIT = {
    "": 1,
    "B": 1,
    "k": 10**3,
    "K": 10**3,
    "kB": 10**3,
    "KB": 10**3,
    "M": 10**6,
    "MB": 10**6,
    "G": 10**9,
    "GB": 10**9,
    "T": 10**12,
    "TB": 10**12,
    "P": 10**15,
    "PB": 10**15,
    "E": 10**18,
    "EB": 10**18,
    "Ki": 2**10,
    "KiB": 2**10,
    "Mi": 2**20,
    "MiB": 2**20,
    "Gi": 2**30,
    "GiB": 2**30,
    "Ti": 2**40,
    "TiB": 2**40,
    "Pi": 2**50,
    "PiB": 2**50,
    "Ei": 2**60,
    "EiB": 2**60,
}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)")

_PORT_FIELD = ".Port"
_TRIM_SPACE = " \t\r\n"


def parse_duration(value: str | int | float) -> float:
    """Parse a Go duration (``0``, ``500ms``, ``1h30m``, ``1.5h``) into seconds.

    A bare number other than zero is refused: the Go original read a YAML
    integer as nanoseconds, which silently turned ``15`` into 15 ns.
    Negative durations are refused too; no field accepts one.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '15s', got boolean {value}")
    if isinstance(value, int | float):
        if value == 0:
            return 0.0
        raise ValueError(
            f"the duration {value!r} has no unit; add one, like "
            f"'{value}s' or '{value}ms'"
        )

    text = value.strip()
    body = text.lstrip("+-")
    if len(text) - len(body) > 1 or not body:
        raise ValueError(f"invalid duration {text!r}; expected e.g. '15s', '1h30m'")
    if body == "0":
        return 0.0

    nanoseconds = _duration_nanoseconds(text, body)
    if text.startswith("-") and nanoseconds:
        raise ValueError(f"the duration {text!r} is negative")
    if nanoseconds > _MAX_NANOSECONDS:
        raise ValueError(f"the duration {text!r} is too large (at most ~292 years)")
    return float(nanoseconds / 10**9)


def _duration_nanoseconds(text: str, body: str) -> Fraction:
    total = Fraction(0)
    pos = 0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        whole, frac, unit = match.group(1), match.group(2), match.group(3)
        if not whole and not frac:
            raise ValueError(
                f"invalid duration {text!r}; expected a number and a unit, "
                "like '15s' or '1h30m'"
            )
        if not unit:
            number = body[pos : match.end()]
            if pos == 0:
                example = f"like '{number}s' or '{number}ms'"
                raise ValueError(
                    f"the duration {text!r} has no unit; add one, {example}"
                )
            raise ValueError(f"the duration {text!r} has no unit after {number!r}")
        if unit not in _NS_PER_UNIT:
            raise ValueError(
                f"invalid duration {text!r}: unknown unit {unit!r}; "
                "use ns, us, ms, s, m or h"
            )

        number = Fraction(int(whole or "0"))
        if frac:
            number += Fraction(int(frac), 10 ** len(frac))
        total += number * _NS_PER_UNIT[unit]
        if total > _MAX_NANOSECONDS:
            break
        pos = match.end()
    return total


def format_duration(seconds: float) -> str:
    """Write seconds back in Go syntax, shortest form: ``1h30m``, ``100ms``."""
    ns = round(seconds * 10**9)
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns == 0:
        return "0s"
    if ns < 10**3:
        return f"{sign}{ns}ns"
    if ns < 10**6:
        return f"{sign}{_decimal(ns, 10**3)}us"
    if ns < 10**9:
        return f"{sign}{_decimal(ns, 10**6)}ms"

    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    if rest:
        parts.append(f"{_decimal(rest, 10**9)}s")
    return sign + "".join(parts)


def _decimal(amount: int, unit: int) -> str:
    whole, frac = divmod(amount, unit)
    if not frac:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{frac:0{digits}d}".rstrip("0")


def parse_size(value: str | int) -> int:
    """Parse a memory size into bytes: ``1048576``, ``512Mi``, ``1G``, ``1GB``.

    Suffixes follow Kubernetes quantities: ``Ki``/``Mi``/``Gi``... are powers
    of 1024, ``k``/``M``/``G``... (and the ``kB``/``MB``/``GB`` spellings)
    powers of 1000. A fraction is rounded up to a whole byte, as Kubernetes
    does.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a size like '512Mi', got {value!r}")
    if isinstance(value, int):
        return _check_bytes(value, repr(value))

    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"the size {text!r} is negative")
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid size {text!r}; expected e.g. '512Mi', '1G'")
    number, unit = match.group(1), match.group(2)
    if unit not in _BYTES_PER_UNIT:
        raise ValueError(f"invalid size {text!r}: {_size_unit_hint(unit)}")
    if unit in ("", "B") and "." in number:
        raise ValueError(f"invalid size {text!r}: bytes must be a whole number")

    return _check_bytes(math.ceil(Fraction(number) * _BYTES_PER_UNIT[unit]), text)


def _check_bytes(amount: int, shown: str) -> int:
    if amount < 0:
        raise ValueError(f"the size {shown} is negative")
    if amount > _MAX_BYTES:
        raise ValueError(f"the size {shown} is too large")
    return amount


def _size_unit_hint(unit: str) -> str:
    if unit == "m":
        # Kubernetes reads "m" as milli; refusing it beats reading 500m as
        # half a byte or as 500 megabytes, depending on who wrote it.
        return "unknown unit 'm'; write 'M' for megabytes or 'Mi' for mebibytes"
    for known in _BYTES_PER_UNIT:
        if known and known.lower() == unit.lower():
            return f"unknown unit {unit!r}; did you mean {known!r}?"
    return f"unknown unit {unit!r}; use e.g. Ki, Mi, Gi (x1024) or k, M, G (x1000)"


def parse_port_template(template: str) -> list[str | None]:
    """Split a port template into literal texts and ``None`` where the port goes.

    The syntax is Go's ``text/template`` restricted to the one field the
    original passed: ``{{.Port}}``, with optional spaces and the ``{{-``/``-}}``
    whitespace trim markers. Anything else is refused with a ValueError.
    """
    parts: list[str | None] = []
    pos = 0
    while True:
        start = template.find("{{", pos)
        literal = template[pos:] if start < 0 else template[pos:start]
        if "}}" in literal:
            raise ValueError("unbalanced braces: '}}' without a matching '{{'")
        if start < 0:
            parts.append(literal)
            break

        end = template.find("}}", start + 2)
        if end < 0:
            raise ValueError("unclosed action: '{{' without a matching '}}'")
        action = template[start + 2 : end]
        trim_left = action[:1] == "-" and action[1:2] in tuple(_TRIM_SPACE)
        trim_right = action[-1:] == "-" and action[-2:-1] in tuple(_TRIM_SPACE)
        _check_action(action[1 if trim_left else 0 : -1 if trim_right else None])

        parts.append(literal.rstrip(_TRIM_SPACE) if trim_left else literal)
        parts.append(None)
        pos = end + 2
        if trim_right:
            pos = len(template) - len(template[pos:].lstrip(_TRIM_SPACE))
    return parts


def _check_action(action: str) -> None:
    field = action.strip(_TRIM_SPACE)
    if field == _PORT_FIELD:
        return
    if re.fullmatch(r"\.[A-Za-z_][A-Za-z0-9_]*", field):
        raise ValueError(
            f"unknown template field {field!r}; only {{{{.Port}}}} is supported"
        )
    raise ValueError(
        f"unsupported template action {'{{' + action + '}}'!r}; "
        "only {{.Port}} is supported"
    )


def validate_port_template(template: str) -> None:
    """Raise ValueError unless the template parses and uses the port."""
    if None not in parse_port_template(template):
        raise ValueError(
            "the template never uses {{.Port}}, so every worker would get the "
            "same argument"
        )


def render_port_template(template: str, port: int) -> str:
    """Render a port argument value: ``--port={{.Port}}`` -> ``--port=9090``."""
    return "".join(
        str(port) if part is None else part for part in parse_port_template(template)
    )
