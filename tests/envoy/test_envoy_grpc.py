"""A gRPC pool through a real Envoy: h2c both ways, gRPC health checking."""

from __future__ import annotations

import grpc
import pytest
from envoy_testing import eventually, free_port, make_pool, static_setup
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from monoceros.envoy import bootstrap
from monoceros.envoy.admin import EnvoyAdmin
from monoceros.envoy.binary import envoy_command
from monoceros.envoy.resources import Endpoint

pytestmark = pytest.mark.envoy

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
async def grpc_worker():
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, port
    await server.stop(None)


async def test_grpc_pool_serves_and_follows_worker_health(
    tmp_path, run_envoy, envoy_binary, grpc_worker
):
    servicer, worker_port = grpc_worker
    pool = make_pool(protocol="grpc", admin_port=free_port(), listener_port=free_port())
    endpoints = [Endpoint("127.0.0.1", worker_port, worker_id="web_0")]
    config = static_setup(pool, str(tmp_path / "xds.sock"), endpoints)
    path = bootstrap.write_bootstrap(config, str(tmp_path))
    run_envoy(envoy_command(envoy_binary, path, drain_time=1))

    async with EnvoyAdmin("127.0.0.1", pool.server.admin_port) as admin:
        await eventually(admin.ready, 20, "Envoy to become LIVE")

        async def routable() -> bool:
            return await admin.routes_to("web", worker_port)

        await eventually(routable, 10, "the gRPC worker to pass its check")

        target = f"127.0.0.1:{pool.server.listener_port}"
        async with grpc.aio.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == SERVING

            # The worker reports NOT_SERVING: Envoy's gRPC check notices.
            await servicer.set("", NOT_SERVING)

            async def failed() -> bool:
                (host,) = await admin.cluster_hosts("web")
                return host.failed_active_hc

            await eventually(failed, 10, "Envoy to see NOT_SERVING")
            assert not await admin.routes_to("web", worker_port)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
