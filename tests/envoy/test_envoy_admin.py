"""EnvoyAdmin against a real Envoy serving the built resources.

The Envoy runs a static copy of the pool's resources (the cluster STATIC
with the built CLA, the built route inline) in front of two real HTTP
servers standing for workers: one serving, one marked DRAINING.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from envoy_testing import eventually, free_port, make_pool, static_setup

from monoceros.envoy import bootstrap
from monoceros.envoy.admin import EnvoyAdmin, EnvoyAdminError, ListenerStatus
from monoceros.envoy.binary import envoy_command
from monoceros.envoy.resources import Endpoint

pytestmark = pytest.mark.envoy


async def start_worker(name: str, *, healthy: bool = True) -> tuple[web.AppRunner, int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=name)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok", status=200 if healthy else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


@pytest.fixture
async def workers() -> AsyncIterator[list[int]]:
    started = [await start_worker(f"web_{i}") for i in range(2)]
    yield [port for _, port in started]
    for runner, _ in started:
        await runner.cleanup()


async def start_static_envoy(
    tmp_path, run_envoy, envoy_binary, endpoints, **pool_options
):
    pool = make_pool(admin_port=free_port(), listener_port=free_port(), **pool_options)
    config = static_setup(pool, str(tmp_path / "xds.sock"), endpoints)
    path = bootstrap.write_bootstrap(config, str(tmp_path))
    run_envoy(envoy_command(envoy_binary, path, drain_time=pool.signal_timeout))
    admin = EnvoyAdmin("127.0.0.1", pool.server.admin_port)
    await eventually(admin.ready, 20, "Envoy to become LIVE")
    return pool, admin


async def fetch(port: int, headers: dict[str, str] | None = None) -> str:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}/"
        async with session.get(url, headers=headers) as response:
            assert response.status == 200
            return await response.text()


async def test_admin_against_live_envoy(tmp_path, run_envoy, envoy_binary, workers):
    serving, draining = workers
    endpoints = [
        Endpoint("127.0.0.1", serving, worker_id="web_0"),
        Endpoint("127.0.0.1", draining, draining=True, worker_id="web_1"),
    ]
    pool, admin = await start_static_envoy(tmp_path, run_envoy, envoy_binary, endpoints)
    async with admin:
        info = await admin.server_info()
        assert info["state"] == "LIVE"
        assert info["node"]["id"] == "monoceros-web"
        assert info["hot_restart_version"] == "disabled"

        port = pool.server.listener_port
        assert await admin.listeners() == [
            ListenerStatus("web-listener", "127.0.0.1", port)
        ]

        async def serving_is_routable() -> bool:
            return await admin.routes_to("web", serving)

        await eventually(serving_is_routable, 10, "the serving worker to pass")
        hosts = {h.hostname: h for h in await admin.cluster_hosts("web")}
        assert hosts["web_0"].healthy and not hosts["web_0"].draining
        assert hosts["web_1"].draining and not hosts["web_1"].healthy
        assert hosts["web_1"].port == draining
        assert not await admin.routes_to("web", draining)
        assert not await admin.routes_to("web", serving, address="127.0.0.2")
        assert await admin.cluster_hosts("no-such-cluster") == []

        # DRAINING takes the host out of balancing: every request lands on
        # the serving worker although the draining one passes its checks.
        answers = [await fetch(port) for _ in range(20)]
        assert set(answers) == {"web_0"}

        dump = await admin.config_dump()
        (first, *_) = dump["configs"]
        assert first["bootstrap"]["node"]["id"] == "monoceros-web"


async def test_drain_listeners_closes_the_port(
    tmp_path, run_envoy, envoy_binary, workers
):
    endpoints = [Endpoint("127.0.0.1", workers[0], worker_id="web_0")]
    pool, admin = await start_static_envoy(tmp_path, run_envoy, envoy_binary, endpoints)
    port = pool.server.listener_port
    async with admin:
        assert await fetch(port) == "web_0"

        await admin.drain_listeners(graceful=True)

        async def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        # The drain lasts the pool's signal_timeout (1 s here).
        await eventually(refused, 10, "the drained listener to close")


async def test_hash_policy_keeps_a_session_on_one_worker(
    tmp_path, run_envoy, envoy_binary, workers
):
    endpoints = [
        Endpoint("127.0.0.1", port, worker_id=f"web_{i}")
        for i, port in enumerate(workers)
    ]
    pool, admin = await start_static_envoy(
        tmp_path, run_envoy, envoy_binary, endpoints, algorithm="RING_HASH"
    )
    port = pool.server.listener_port
    async with admin:

        async def all_routable() -> bool:
            hosts = await admin.cluster_hosts("web")
            return len(hosts) == 2 and all(h.healthy for h in hosts)

        await eventually(all_routable, 10, "both workers to pass")

        for key in ("alice", "bob"):
            headers = {"x-session-key": key}
            answers = {await fetch(port, headers) for _ in range(10)}
            assert len(answers) == 1, (key, answers)

        spread = {await fetch(port, {"x-session-key": f"k{i}"}) for i in range(20)}
        assert spread == {"web_0", "web_1"}


async def test_no_panic_routing_to_workers_failing_health_checks(
    tmp_path, run_envoy, envoy_binary
):
    # Two of three workers fail their health check: below Envoy's default
    # panic threshold (50 %) it would send them two requests in three.
    started = [
        await start_worker("good"),
        await start_worker("sick_1", healthy=False),
        await start_worker("sick_2", healthy=False),
    ]
    try:
        endpoints = [
            Endpoint("127.0.0.1", port, worker_id=name)
            for (_, port), name in zip(
                started, ("good", "sick_1", "sick_2"), strict=True
            )
        ]
        pool, admin = await start_static_envoy(
            tmp_path, run_envoy, envoy_binary, endpoints
        )
        async with admin:

            async def sick_ones_failed() -> bool:
                hosts = await admin.cluster_hosts("web")
                return sorted(h.hostname for h in hosts if h.failed_active_hc) == [
                    "sick_1",
                    "sick_2",
                ]

            await eventually(sick_ones_failed, 10, "the health checks to fail")
            port = pool.server.listener_port
            answers = [await fetch(port) for _ in range(30)]
            assert set(answers) == {"good"}
    finally:
        for runner, _ in started:
            await runner.cleanup()


async def test_unreachable_admin_errors_clearly():
    port = free_port()
    async with EnvoyAdmin("127.0.0.1", port, timeout=1) as admin:
        assert await admin.ready() is False
        with pytest.raises(EnvoyAdminError, match=f"GET http://127.0.0.1:{port}/"):
            await admin.server_info()
        with pytest.raises(EnvoyAdminError, match="POST .*/drain_listeners"):
            await admin.drain_listeners()
