"""A bounded HTTP load generator for tests and benchmarks (loopback only).

`Load` runs `concurrency` clients in a background thread with its own event
loop, each sending GET requests in a loop until stopped or `max_seconds`
pass. Every answer is tallied: status codes, connection errors, and the
worker that answered (from the `X-Worker-Id` header). `on_response`, if
given, is called in the load thread with every answer's URL, status, headers
and latency, for callers that need more than the tally (the time a worker
first answered, the latency of one kind of request).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field

import aiohttp


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)
    workers: collections.Counter = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.ok + self.failed

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(q * len(data)))]


class Load:
    def __init__(
        self,
        url: str,
        *,
        concurrency: int = 8,
        keepalive: bool = True,
        max_seconds: float = 60.0,
        rate: float | None = None,
        path_for=None,
        on_response=None,
    ):
        self.url = url
        self.concurrency = concurrency
        self.keepalive = keepalive
        self.max_seconds = max_seconds
        self.rate = rate  # requests per second per client, None: as fast as possible
        self.path_for = path_for  # callable(n) -> url suffix, for skewed load
        self.on_response = on_response  # callable(url, status, headers, seconds)
        self.tally = Tally()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> Tally:
        self._stop.set()
        self._thread.join(self.max_seconds + 30)
        return self.tally

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.tally.ok, self.tally.failed

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, force_close=not self.keepalive, enable_cleanup_closed=True
        )
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
            deadline = time.monotonic() + self.max_seconds
            await asyncio.gather(
                *(self._client(s, deadline) for _ in range(self.concurrency))
            )

    async def _client(self, session: aiohttp.ClientSession, deadline: float) -> None:
        n = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            url = self.url + (self.path_for(n) if self.path_for else "")
            n += 1
            t0 = time.perf_counter()
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    status = resp.status
                    worker = resp.headers.get("X-Worker-Id", "")
                    headers = resp.headers
                error = None
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                status, worker, error = 0, "", type(exc).__name__
            elapsed = time.perf_counter() - t0
            with self._lock:
                t = self.tally
                if error is None:
                    t.statuses[status] += 1
                    if 200 <= status < 300:
                        t.ok += 1
                        t.workers[worker] += 1
                        t.latencies.append(elapsed)
                    else:
                        t.failed += 1
                else:
                    t.failed += 1
                    t.errors[error] += 1
            if error is None and self.on_response is not None:
                self.on_response(url, status, headers, elapsed)
            if self.rate:
                await asyncio.sleep(max(0.0, 1 / self.rate - elapsed))
