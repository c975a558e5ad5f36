"""Go durations, memory sizes and the {{.Port}} template."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monoceros.units import (
    format_duration,
    parse_duration,
    parse_size,
    render_port_template,
    validate_port_template,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        (0, 0.0),
        (0.0, 0.0),
        ("0s", 0.0),
        ("-0s", 0.0),
        ("500ms", 0.5),
        ("15s", 15.0),
        ("+15s", 15.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("4h", 14400.0),
        ("300us", 0.0003),
        ("300\u00b5s", 0.0003),
        ("300\u03bcs", 0.0003),
        ("250ns", 2.5e-7),
        ("1h1m1s1ms", 3661.001),
        (".5s", 0.5),
        ("5.s", 5.0),
        ("2562047h", 2562047 * 3600.0),
    ],
)
def test_parse_duration_accepts_go_syntax(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("15", "has no unit"),
        (15, "has no unit; add one"),
        (1.5, "has no unit"),
        ("1h30", "has no unit"),
        ("-5s", "negative"),
        ("5x", "unknown unit 'x'"),
        ("15S", "unknown unit 'S'"),
        ("1h 30m", "unknown unit 'h '"),
        ("", "invalid duration"),
        ("s", "invalid duration"),
        (".s", "invalid duration"),
        ("--5s", "invalid duration"),
        ("9999999h", "too large"),
        (True, "boolean"),
    ],
)
def test_parse_duration_refuses(text, message):
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@given(st.integers(min_value=0, max_value=10**15))
def test_format_duration_round_trips(nanoseconds):
    seconds = nanoseconds / 10**9
    assert parse_duration(format_duration(seconds)) == pytest.approx(
        seconds, rel=1e-9, abs=1e-12
    )


def test_format_duration_shortest_forms():
    assert format_duration(5400) == "1h30m"
    assert format_duration(0.1) == "100ms"
    assert format_duration(1.5) == "1.5s"
    assert format_duration(0) == "0s"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (0, 0),
        ("0", 0),
        (1048576, 1048576),
        ("1048576", 1048576),
        ("512Mi", 512 * 2**20),
        ("1Gi", 2**30),
        ("100Ki", 102400),
        ("1G", 10**9),
        ("500M", 500 * 10**6),
        ("10k", 10000),
        ("10K", 10000),
        ("1GB", 10**9),
        ("1MB", 10**6),
        ("1kB", 1000),
        ("2GiB", 2 * 2**30),
        ("1.5Gi", 3 * 2**29),
        ("0.1Ki", 103),  # rounded up to a whole byte, as Kubernetes does
        ("100B", 100),
    ],
)
def test_parse_size_accepts(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-1Gi", "negative"),
        (-5, "negative"),
        ("500m", "'M' for megabytes"),
        ("1gb", "did you mean 'GB'?"),
        ("1gi", "did you mean 'Gi'?"),
        ("12 parsecs", "invalid size"),
        ("lots", "invalid size"),
        ("1.5", "whole number"),
        ("1Zi", "unknown unit 'Zi'"),
        ("99999999Ei", "too large"),
        (1.5, "expected a size"),
        (True, "expected a size"),
    ],
)
def test_parse_size_refuses(text, message):
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("template", "rendered"),
    [
        ("{{.Port}}", "9090"),
        ("{{ .Port }}", "9090"),
        ("--port={{.Port}}", "--port=9090"),
        ("127.0.0.1:{{.Port}}", "127.0.0.1:9090"),
        ("{{.Port}}-{{.Port}}", "9090-9090"),
        ("a {{- .Port -}} b", "a9090b"),
        ("{ {.Port} }", None),
    ],
)
def test_render_port_template(template, rendered):
    if rendered is None:
        # Single braces are literal text, as in Go; no port, so invalid config.
        assert render_port_template(template, 9090) == template
        with pytest.raises(ValueError, match="never uses"):
            validate_port_template(template)
    else:
        assert render_port_template(template, 9090) == rendered
        validate_port_template(template)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{.Foo}}", "unknown template field '.Foo'; only {{.Port}} is supported"),
        ("{{.port}}", "unknown template field '.port'"),
        ("{{.Port}", "unclosed action"),
        ("{{.Port", "unclosed action"),
        ("--port={{", "unclosed action"),
        (".Port}}", "unbalanced braces"),
        ("{{.Port}}}}", "unbalanced braces"),
        ("{{}}", "unsupported template action"),
        ('{{ printf "%d" .Port }}', "unsupported template action"),
        ("{{-.Port}}", "unsupported template action"),
        ("--port=9090", "never uses {{.Port}}"),
    ],
)
def test_port_template_refuses(template, message):
    with pytest.raises(ValueError) as info:
        validate_port_template(template)
    assert message in str(info.value)
