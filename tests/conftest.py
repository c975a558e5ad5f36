"""Shared test helpers: waiting on conditions against a deadline."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Declared here rather than in pyproject.toml, with the suite that uses it.
    config.addinivalue_line(
        "markers", "faults: fault injection against a real Monoceros (test_faults)"
    )


async def wait_for(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02
):
    """Poll `predicate` until it returns a truthy value; fail on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {predicate}")
        await asyncio.sleep(interval)


def wait_for_sync(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02
):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_range(count: int) -> int:
    """A start port with `count` consecutive ports free on 127.0.0.1 now."""
    import random

    for _ in range(200):
        start = random.randrange(20000, 60000 - count)
        socks = []
        try:
            for port in range(start, start + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return start
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")
