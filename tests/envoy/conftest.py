"""Fixtures for the Envoy tests: the binary and real Envoy processes."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator

import pytest

from monoceros.envoy.binary import find_envoy


@pytest.fixture(scope="session")
def envoy_binary() -> str:
    return find_envoy()


@pytest.fixture
def run_envoy(tmp_path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start Envoy from an argv; every process is killed at teardown."""
    started: list[subprocess.Popen] = []

    def run(argv: list[str]) -> subprocess.Popen:
        log_path = tmp_path / f"envoy-{len(started)}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process.log_path = log_path  # type: ignore[attr-defined]
        started.append(process)
        return process

    yield run

    for process in started:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
