"""The real Envoy started as Monoceros starts it: bootstrap, flags, ADS socket."""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy_testing import eventually, free_port, make_pool

from monoceros.envoy import bootstrap
from monoceros.envoy.admin import EnvoyAdmin, EnvoyAdminError
from monoceros.envoy.binary import envoy_command

pytestmark = pytest.mark.envoy

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


class Recorder(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Records the first request of every ADS stream, then ends the stream.

    It serves nothing: it only shows what the bootstrap makes Envoy send,
    and how soon Envoy reconnects after a stream fails.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[float, str, object]] = []

    async def StreamAggregatedResources(self, requests, context):  # noqa: N802
        await self._record("sotw", requests, context)

    async def DeltaAggregatedResources(self, requests, context):  # noqa: N802
        await self._record("delta", requests, context)

    async def _record(self, kind, requests, context) -> None:
        async for request in requests:
            self.calls.append((time.monotonic(), kind, request))
            break
        await context.abort(grpc.StatusCode.UNAVAILABLE, "no resources here")


@pytest.fixture
def short_dir():
    # A Unix socket path holds at most 107 bytes; pytest's tmp_path may not.
    with tempfile.TemporaryDirectory(prefix="monoceros-") as directory:
        yield directory


@pytest.fixture
async def recorder(short_dir) -> AsyncIterator[tuple[Recorder, str]]:
    socket_path = os.path.join(short_dir, "xds.sock")
    servicer = Recorder()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    server.add_insecure_port("unix:" + socket_path)
    await server.start()
    yield servicer, socket_path
    await server.stop(None)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_ads_bootstrap_reaches_the_xds_socket(
    tmp_path, run_envoy, envoy_binary, recorder, delta
):
    servicer, socket_path = recorder
    pool = make_pool(admin_port=free_port())
    config = bootstrap.build_bootstrap(pool, socket_path, delta=delta)
    path = bootstrap.write_bootstrap(config, str(tmp_path))
    run_envoy(envoy_command(envoy_binary, path, drain_time=1))

    async def six_streams() -> bool:
        return len(servicer.calls) >= 6

    await eventually(six_streams, 20, "six ADS streams from Envoy")

    # gRPC over the pipe address, HTTP/2, the chosen variant, our node.
    times, kinds, requests = zip(*servicer.calls, strict=True)
    assert set(kinds) == {"delta" if delta else "sotw"}
    first = requests[0]
    assert first.node.id == "monoceros-web"
    assert first.node.cluster == "monoceros"
    assert first.type_url in (CLUSTER_TYPE, LISTENER_TYPE)

    # Reconnects follow the 0.1-1 s backoff, not Envoy's default of up to
    # 30 s (jittered, so a gap is at most the 1 s cap plus connect time).
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) < 1.6, gaps

    async with EnvoyAdmin("127.0.0.1", pool.server.admin_port) as admin:
        info = await admin.server_info()
        assert info["node"]["id"] == "monoceros-web"
        # Without an answer from the xDS server Envoy does not claim readiness.
        assert info["state"] != "LIVE"
        assert await admin.ready() is False
        assert await admin.listeners() == []
        dump = await admin.config_dump()
        static = dump["configs"][0]["bootstrap"]["static_resources"]
        assert static["clusters"][0]["name"] == "monoceros_xds"


def _shared_memory_of(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps", encoding="utf-8") as maps:
        return {
            line.split()[-1] for line in maps if "/dev/shm/envoy_shared_memory" in line
        }


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_two_envoys_share_a_host_without_shared_memory(
    tmp_path, run_envoy, envoy_binary, short_dir
):
    socket_path = os.path.join(short_dir, "xds.sock")
    started = []
    for name in ("one", "two"):
        pool = make_pool(name, admin_port=free_port())
        config = bootstrap.build_bootstrap(pool, socket_path)
        path = bootstrap.write_bootstrap(config, str(tmp_path))
        process = run_envoy(envoy_command(envoy_binary, path, drain_time=1))
        started.append((process, EnvoyAdmin("127.0.0.1", pool.server.admin_port)))

    for process, admin in started:
        async with admin:

            async def answers(admin: EnvoyAdmin = admin) -> bool:
                try:
                    await admin.server_info()
                except EnvoyAdminError:
                    return False
                return True

            await eventually(answers, 20, "both Envoys' admin")
        assert process.poll() is None
        assert _shared_memory_of(process.pid) == set()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_hot_restart_would_leave_shared_memory(
    tmp_path, run_envoy, envoy_binary, short_dir
):
    # The reason for --disable-hot-restart, and proof the check above can fail.
    pool = make_pool(admin_port=free_port())
    config = bootstrap.build_bootstrap(pool, os.path.join(short_dir, "xds.sock"))
    path = bootstrap.write_bootstrap(config, str(tmp_path))
    argv = envoy_command(envoy_binary, path, drain_time=1)
    argv.remove("--disable-hot-restart")
    process = run_envoy(argv)
    admin = EnvoyAdmin("127.0.0.1", pool.server.admin_port)

    async def answers() -> bool:
        try:
            await admin.server_info()
        except EnvoyAdminError:
            return False
        return True

    leftovers: set[str] = set()
    try:
        await eventually(answers, 20, "Envoy's admin")
        leftovers = _shared_memory_of(process.pid)
        assert leftovers, "a hot-restartable Envoy maps shared memory"

        process.kill()
        process.wait(timeout=10)
        assert all(os.path.exists(p) for p in leftovers)
    finally:
        await admin.close()
        for leftover in leftovers:
            if os.path.exists(leftover):
                os.unlink(leftover)
