"""Proxy mode: the xDS server, one Envoy per proxy pool, and the glue that
makes each pool's endpoint set follow its workers.

Order matters. The xDS server starts first and holds every proxy pool's
listener, route, cluster and (empty) endpoints before any Envoy starts: an
Envoy that comes up before its control plane waits out fetch timeouts and
reports ready with no listener. Workers start once their Envoy serves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from prometheus_client import Counter

from monoceros.config import Config, PoolConfig
from monoceros.envoy import names, resources
from monoceros.envoy.admin import EnvoyAdminError
from monoceros.envoy.binary import find_envoy
from monoceros.envoy.proxy import EnvoyProxy
from monoceros.pool import Endpoint, Pool, PoolContext
from monoceros.probe import GrpcProbe, HttpProbe, wait_http_ready
from monoceros.worker import Worker
from monoceros.xds import SnapshotCache, XdsServer, default_socket_path, types

log = logging.getLogger(__name__)

# A draining worker is signalled once Envoy ACKs the update that drains it,
# or after this long without an ACK (logged and counted, never a hang).
ACK_TIMEOUT = 5.0


class XdsSink:
    """Publishes a pool's endpoints to its Envoy's node in the xDS cache."""

    def __init__(self, proxy: EnvoyProxy, ack_timeouts: Counter):
        self.proxy = proxy
        self._ack_timeouts = ack_timeouts
        pool = proxy.pool
        assert pool.server is not None
        # Envoy's first health check of a new host comes within one interval;
        # allow a few, plus the time to connect.
        self.serving_timeout = 3 * pool.server.health_check_interval + 5.0

    async def publish(self, pool: str, endpoints: Sequence[Endpoint]) -> bool:
        cla = resources.build_load_assignment(
            pool,
            [
                resources.Endpoint(e.host, e.port, e.draining, e.worker_id)
                for e in endpoints
            ],
        )
        version = self.proxy.cache.set_endpoints(self.proxy.node, cla)
        acked = await self.proxy.cache.wait_acked(
            self.proxy.node, types.ENDPOINT, version, ACK_TIMEOUT
        )
        if not acked:
            self._ack_timeouts.labels(pool).inc()
        return acked

    async def wait_serving(self, pool: str, endpoint: Endpoint) -> bool:
        """Wait until Envoy itself would route a new request to `endpoint`.

        An endpoint added to EDS gets no traffic until Envoy's first active
        health check of it passes; make before break must not drain the
        worker being replaced before then.
        """
        admin = self.proxy.admin
        cluster = names.cluster_name(pool)
        deadline = time.monotonic() + self.serving_timeout
        while time.monotonic() < deadline:
            try:
                if await admin.routes_to(cluster, endpoint.port, address=endpoint.host):
                    return True
            except EnvoyAdminError:
                pass  # Envoy restarting: keep trying until the deadline
            await asyncio.sleep(0.02)
        return False


class HttpReadiness:
    def __init__(self, probe: HttpProbe | GrpcProbe, timeout: float):
        self.probe = probe
        self.timeout = timeout

    async def wait_ready(self, pool: Pool, worker: Worker) -> bool | None:
        return await wait_http_ready(self.probe, worker, self.timeout)


class HttpLiveness:
    def __init__(self, probe: HttpProbe | GrpcProbe, interval: float, threshold: int):
        self.probe = probe
        self.interval = interval
        self.threshold = threshold

    async def check(self, worker: Worker) -> bool:
        assert worker.port is not None
        return await self.probe.check(worker.port)


class ProxyFrontend:
    """The Supervisor's frontend in proxy mode (see `supervisor.Frontend`)."""

    def __init__(self, config: Config):
        self.config = config
        self.cache = SnapshotCache()
        self.socket = config.xds.socket or default_socket_path()
        self.server: XdsServer | None = None
        self.proxies: dict[str, EnvoyProxy] = {}
        self._probes: dict[str, HttpProbe | GrpcProbe] = {}
        self._ack_timeouts: Counter | None = None
        self._supervisor = None
        self._binary = ""

    async def start(self, supervisor) -> None:
        self._supervisor = supervisor
        registry = supervisor.metrics.registry
        self._ack_timeouts = Counter(
            "endpoint_ack_timeouts",
            "Endpoint updates Envoy did not ACK within the drain wait",
            ["pool"],
            namespace="monoceros",
            subsystem="xds",
            registry=registry,
        )
        self._binary = find_envoy()
        self.server = XdsServer(
            self.cache,
            unix_socket=self.socket,
            tcp_address=self.config.xds.address,
            tls=self.config.xds.tls,
            registry=registry,
        )
        await self.server.start()
        # Envoys start side by side; any failure stops start-up.
        await asyncio.gather(
            *(self.add_pool(p) for p in self.config.pools if p.server is not None)
        )

    async def add_pool(self, pool: PoolConfig) -> None:
        """Publish a proxy pool's resources, then start and await its Envoy."""
        sup = self._supervisor
        assert sup is not None
        self._publish_static(pool, with_endpoints=True)
        proxy = EnvoyProxy(
            pool,
            binary=self._binary,
            xds_socket=self.socket,
            cache=self.cache,
            reaper=sup.reaper,
            output=sup.output,
            metrics=sup.metrics,
        )
        self.proxies[pool.name] = proxy
        await proxy.start()

    async def remove_pool(self, name: str) -> None:
        """Stop a removed pool's Envoy (after its workers) and forget it."""
        proxy = self.proxies.pop(name, None)
        if proxy is not None:
            await proxy.stop()
        probe = self._probes.pop(name, None)
        if probe is not None:
            await probe.close()
        self.cache.remove_node(names.node_id(name))

    async def update_pool(
        self, old: PoolConfig, new: PoolConfig, ctx
    ) -> str | None:
        """Push a proxy pool's new settings to its Envoy.

        Listener, route and cluster get new versions over xDS; the xDS server
        re-sends the endpoints of a changed cluster so it leaves warming at
        once, and sends a route only once its cluster is there. Only a new
        admin port or bootstrap directory needs a new Envoy process.

        Returns what went wrong, if Envoy rejected the new resources (a
        listener port already taken, say): it keeps serving the old ones.
        """
        proxy = self.proxies[new.name]
        assert old.server is not None and new.server is not None
        proxy.pool, proxy.server = new, new.server
        self._publish_static(new, with_endpoints=False)
        self.pool_context(new, ctx)
        restart = (old.server.admin_port, old.server.proxy_config_path) != (
            new.server.admin_port,
            new.server.proxy_config_path,
        )
        if restart:
            await proxy.restart()
            return None
        return await self._rejection(proxy)

    async def _rejection(self, proxy: EnvoyProxy) -> str | None:
        """Wait for the ACK of every type just pushed; the NACK if any."""
        for type_url in (types.CLUSTER, types.LISTENER, types.ROUTE):
            version = self.cache.version(proxy.node, type_url)
            if await self.cache.wait_acked(proxy.node, type_url, version, ACK_TIMEOUT):
                continue
            errors = self.cache.rejections(proxy.node, type_url)
            if errors:
                return f"Envoy rejected it and keeps the previous one: {errors[0]}"
            return "Envoy did not acknowledge it in time"
        return None

    def _publish_static(self, pool: PoolConfig, *, with_endpoints: bool) -> None:
        self.cache.set_resources(
            names.node_id(pool.name),
            clusters=[resources.build_cluster(pool)],
            listeners=[resources.build_listener(pool)],
            routes=[resources.build_route_configuration(pool)],
            endpoints=[resources.build_load_assignment(pool.name, [])]
            if with_endpoints
            else None,
        )

    def pool_context(self, pool: PoolConfig, ctx: PoolContext) -> PoolContext:
        proxy = self.proxies.get(pool.name)
        if proxy is None or pool.server is None:
            return ctx
        assert self._ack_timeouts is not None
        probe = self._probes.get(pool.name)
        if pool.server.protocol == "grpc":
            if not isinstance(probe, GrpcProbe):
                probe = GrpcProbe()
        elif isinstance(probe, HttpProbe):
            # Running workers' liveness checks hold this probe: change it in
            # place so they follow a new health_check_path too.
            probe.path = pool.server.health_check_path
        else:
            probe = HttpProbe(pool.server.health_check_path)
        self._probes[pool.name] = probe
        ctx.sink = XdsSink(proxy, self._ack_timeouts)
        ctx.readiness = HttpReadiness(probe, pool.server.ready_timeout)
        ctx.liveness = HttpLiveness(
            probe, pool.server.health_check_interval, pool.server.unhealthy_threshold
        )
        return ctx

    async def drain(self) -> None:
        await asyncio.gather(*(p.drain() for p in self.proxies.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.proxies.values()))
        for probe in self._probes.values():
            await probe.close()
        if self.server is not None:
            await self.server.stop()
            self.server = None
