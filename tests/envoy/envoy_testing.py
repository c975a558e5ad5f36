"""Helpers shared by the Envoy tests: pools, ports, static setups, waiting."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2

from monoceros.config import PoolConfig, PortArgConfig, ServerConfig
from monoceros.envoy import bootstrap, resources


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_pool(
    name: str = "web",
    *,
    algorithm: str = "ROUND_ROBIN",
    protocol: str = "http1",
    admin_port: int = 9901,
    listener_port: int = 10000,
    proxy_config_path: str = "./envoy",
    signal_timeout: float = 1.0,
) -> PoolConfig:
    server = ServerConfig(
        port_arg=PortArgConfig("--port", "{{.Port}}", 8000),
        health_check_path="/healthz",
        load_balancer_algorithm=algorithm,
        admin_port=admin_port,
        listener_address="127.0.0.1",
        listener_port=listener_port,
        proxy_config_path=proxy_config_path,
        protocol=protocol,
    )
    return PoolConfig(
        name=name, exec="true", signal_timeout=signal_timeout, server=server
    )


def static_setup(
    pool: PoolConfig, xds_socket: str, endpoints: list[resources.Endpoint]
) -> bootstrap_pb2.Bootstrap:
    """The pool's built resources, inlined into a bootstrap (tests only).

    The cluster becomes STATIC with the built CLA as its load assignment, and
    the listener's HTTP connection manager gets the built route inline
    instead of fetching it over RDS; everything else is as built.
    """
    config = bootstrap.build_bootstrap(pool, xds_socket)
    config.ClearField("dynamic_resources")

    cluster = resources.build_cluster(pool)
    cluster.type = cluster_pb2.Cluster.STATIC
    cluster.ClearField("eds_cluster_config")
    cluster.load_assignment.CopyFrom(
        resources.build_load_assignment(pool.name, endpoints)
    )

    listener = resources.build_listener(pool)
    inline_route(listener.filter_chains[0].filters[0].typed_config, pool)

    config.static_resources.clusters.append(cluster)
    config.static_resources.listeners.append(listener)
    return config


def inline_route(typed_config: any_pb2.Any, pool: PoolConfig) -> None:
    manager = hcm_pb2.HttpConnectionManager()
    typed_config.Unpack(manager)
    manager.ClearField("rds")
    manager.route_config.CopyFrom(resources.build_route_configuration(pool))
    typed_config.Pack(manager)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


async def eventually(
    condition: Callable[[], Awaitable[bool]], timeout: float, what: str
) -> None:
    """Await ``condition()`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)
