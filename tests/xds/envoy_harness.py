"""A real Envoy for tests: a typed bootstrap pointing ADS at a Unix socket,
free ports, its own base id, no hot restart, and always killed at the end."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import aiohttp
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

XDS_CLUSTER = "monoceros_xds"


def find_envoy() -> str | None:
    local = os.path.join(os.path.dirname(sys.executable), "envoy")
    if os.access(local, os.X_OK):
        return local
    return shutil.which("envoy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bootstrap(node_id: str, socket_path: str, admin_port: int,
              delta: bool) -> bootstrap_pb2.Bootstrap:
    """Only the node, the admin and the ADS cluster; the rest comes by xDS."""
    config = bootstrap_pb2.Bootstrap()
    config.node.id = node_id
    config.node.cluster = "monoceros-test"  # Envoy exits without it
    admin = config.admin.address.socket_address
    admin.address, admin.port_value = "127.0.0.1", admin_port

    ads = config.dynamic_resources.ads_config
    ads.api_type = (
        config_source_pb2.ApiConfigSource.DELTA_GRPC
        if delta else config_source_pb2.ApiConfigSource.GRPC
    )
    ads.transport_api_version = config_source_pb2.V3
    grpc_service = ads.grpc_services.add()
    grpc_service.envoy_grpc.cluster_name = XDS_CLUSTER
    # Envoy's default backoff took 11-13 s to reconnect after an outage.
    backoff = grpc_service.envoy_grpc.retry_policy.retry_back_off
    backoff.base_interval.FromMilliseconds(100)
    backoff.max_interval.FromMilliseconds(1000)
    for source in (config.dynamic_resources.cds_config,
                   config.dynamic_resources.lds_config):
        source.ads.SetInParent()
        source.resource_api_version = config_source_pb2.V3

    xds = config.static_resources.clusters.add(
        name=XDS_CLUSTER, type=cluster_pb2.Cluster.STATIC
    )
    xds.connect_timeout.FromMilliseconds(500)
    xds.load_assignment.cluster_name = XDS_CLUSTER
    endpoint = xds.load_assignment.endpoints.add().lb_endpoints.add().endpoint
    endpoint.address.pipe.path = socket_path
    # gRPC needs HTTP/2; without it Envoy fails silently.
    options = http_protocol_options_pb2.HttpProtocolOptions()
    options.explicit_http_config.http2_protocol_options.SetInParent()
    xds.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ].Pack(options)
    return config


def http_listener(name: str, port: int, route_name: str) -> listener_pb2.Listener:
    """A listener whose routes come by RDS over ADS."""
    manager = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    manager.rds.route_config_name = route_name
    manager.rds.config_source.ads.SetInParent()
    manager.rds.config_source.resource_api_version = config_source_pb2.V3
    router = manager.http_filters.add(name="envoy.filters.http.router")
    router.typed_config.Pack(router_pb2.Router())

    listener = listener_pb2.Listener(name=name)
    address = listener.address.socket_address
    address.address, address.port_value = "127.0.0.1", port
    chain = listener.filter_chains.add()
    hcm = chain.filters.add(name="envoy.filters.network.http_connection_manager")
    hcm.typed_config.Pack(manager)
    return listener


def http_route(name: str, cluster: str) -> route_pb2.RouteConfiguration:
    config = route_pb2.RouteConfiguration(name=name)
    host = config.virtual_hosts.add(name="all", domains=["*"])
    route = host.routes.add()
    route.match.prefix = "/"
    route.route.cluster = cluster
    return config


class Envoy:
    """One Envoy process; ``stop`` kills it (the fixture always calls it)."""

    def __init__(self, binary: str, workdir: str, node_id: str, socket_path: str,
                 delta: bool) -> None:
        self.binary = binary
        self.workdir = workdir
        self.node_id = node_id
        self.socket_path = socket_path
        self.delta = delta
        self.admin_port = free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = os.path.join(workdir, f"envoy-{self.admin_port}.log")
        self._http: aiohttp.ClientSession | None = None

    def start(self) -> None:
        config = bootstrap(self.node_id, self.socket_path, self.admin_port, self.delta)
        path = os.path.join(self.workdir, f"bootstrap-{self.admin_port}.json")
        with open(path, "w") as f:
            f.write(json_format.MessageToJson(config))
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [self.binary, "-c", path, "--use-dynamic-base-id",
                 "--disable-hot-restart", "-l", "warning"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.process.wait)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    async def get(self, path: str) -> str:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        async with self._http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            return await r.text()

    async def try_get(self, path: str) -> str | None:
        assert self.process is not None and self.process.poll() is None, self.log()
        try:
            return await self.get(path)
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def clusters(self) -> dict[str, list[int]]:
        """Active clusters and the ports of their hosts, from /clusters."""
        text = await self.try_get("/clusters?format=json")
        if text is None:
            return {}
        out = {}
        for status in json.loads(text).get("cluster_statuses", []):
            ports = [
                h["address"]["socket_address"]["port_value"]
                for h in status.get("host_statuses", [])
                if "socket_address" in h.get("address", {})
            ]
            out[status["name"]] = sorted(ports)
        return out

    async def stat(self, name: str) -> int | None:
        text = await self.try_get(f"/stats?filter=^{name}$&format=json")
        if not text:
            return None
        for entry in json.loads(text).get("stats", []):
            if entry.get("name") == name:
                return int(entry["value"])
        return None
