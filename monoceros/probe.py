"""HTTP readiness and liveness probes of proxy-mode workers.

Monoceros probes each worker's `health_check_path` itself: a worker joins
Envoy's endpoint set only after its first 2xx answer (readiness), and a
READY worker whose probe fails `unhealthy_threshold` times in a row is
replaced, make before break (liveness).
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from monoceros.worker import Worker

log = logging.getLogger(__name__)


class HttpProbe:
    """GET http://127.0.0.1:<port><path>; healthy on a 2xx answer."""

    def __init__(self, path: str, timeout: float = 1.0):
        self.path = path
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No pooling: a probe must open its own connection, the way a
            # new client would, and must not keep a worker's slot busy.
            connector = aiohttp.TCPConnector(force_close=True, limit=0)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self.timeout
            )
        return self._session

    async def check(self, port: int) -> bool:
        url = f"http://127.0.0.1:{port}{self.path}"
        try:
            async with self._client().get(url, allow_redirects=False) as resp:
                await resp.read()
                return 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class GrpcProbe:
    """The standard gRPC health service: healthy when the server is SERVING.

    gRPC servers answer a plain HTTP GET with a reset stream, so pools whose
    workers speak gRPC are probed the way Envoy checks them.
    """

    def __init__(self, timeout: float = 1.0):
        self.timeout = timeout

    async def check(self, port: int) -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=self.timeout
                )
            except grpc.aio.AioRpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        return None


async def wait_http_ready(
    probe: HttpProbe | GrpcProbe, worker: Worker, timeout: float
) -> bool | None:
    """Probe until 2xx (True), the worker exits (False) or `timeout` (None).

    Polls quickly at first, since most servers are up within milliseconds,
    then backs off to 0.5 s between attempts.
    """
    assert worker.process is not None and worker.port is not None
    deadline = time.monotonic() + timeout
    interval = 0.02
    while worker.process.alive:
        if await probe.check(worker.port):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        # asyncio.wait leaves the future alone on timeout: no cancel needed.
        await asyncio.wait([worker.process.exited], timeout=min(interval, remaining))
        interval = min(interval * 2, 0.5)
    return False
