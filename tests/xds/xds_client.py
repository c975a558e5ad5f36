"""A raw ADS client that plays Envoy in protocol tests, and resource builders.

Every response it receives is checked against the protocol's invariants
before a test sees it: a type URL, a version, a nonce that is new and larger
than every earlier one on the stream, resources of the right type and no
name twice (R4, R21, R30).
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from monoceros.xds import types

TIMEOUT = 5.0


def cluster(name: str, connect_timeout: float = 1.0) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    c.connect_timeout.FromNanoseconds(int(connect_timeout * 1e9))
    c.eds_cluster_config.eds_config.ads.SetInParent()
    c.eds_cluster_config.eds_config.resource_api_version = config_source_pb2.V3
    return c


def cla(name: str, *ports: int) -> endpoint_pb2.ClusterLoadAssignment:
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    group = assignment.endpoints.add()
    for port in ports:
        lb = group.lb_endpoints.add()
        lb.endpoint.address.socket_address.address = "127.0.0.1"
        lb.endpoint.address.socket_address.port_value = port
    return assignment


def listener(name: str, port: int = 0) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(
                address="127.0.0.1", port_value=port
            )
        ),
    )


def route(name: str, cluster_name: str = "c") -> route_pb2.RouteConfiguration:
    config = route_pb2.RouteConfiguration(name=name)
    host = config.virtual_hosts.add(name="all", domains=["*"])
    r = host.routes.add()
    r.match.prefix = "/"
    r.route.cluster = cluster_name
    return config


def node(node_id: str = "n1") -> base_pb2.Node:
    return base_pb2.Node(id=node_id, cluster="test")


def unpack(body: any_pb2.Any):
    for message in (
        cluster_pb2.Cluster,
        endpoint_pb2.ClusterLoadAssignment,
        listener_pb2.Listener,
        route_pb2.RouteConfiguration,
    ):
        if body.type_url == types.type_url_of(message()):
            out = message()
            body.Unpack(out)
            return out
    raise AssertionError(f"unexpected resource type {body.type_url}")


class AdsClient:
    """One ADS stream, SotW or delta; ``send`` and ``recv`` its messages."""

    def __init__(self, target: str, delta: bool = False) -> None:
        self.target = target
        self.delta = delta
        self.channel = grpc.aio.insecure_channel(target)
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        method = (
            stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        )
        self._outbox: asyncio.Queue = asyncio.Queue()
        self.call = method(self._requests())
        self._last_nonce = 0
        self.responses: list = []
        self.sent = 0

    async def _requests(self):
        while True:
            request = await self._outbox.get()
            if request is None:
                return
            yield request

    def send(self, type_url: str, names=(), *, nonce: str = "", version: str = "",
             node_id: str | None = None, error: str | None = None, **delta):
        if self.delta:
            request = discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url, response_nonce=nonce, **delta
            )
        else:
            request = discovery_pb2.DiscoveryRequest(
                type_url=type_url,
                resource_names=list(names),
                response_nonce=nonce,
                version_info=version,
            )
        if node_id is not None:
            request.node.CopyFrom(node(node_id))
        if error is not None:
            request.error_detail.code = 3
            request.error_detail.message = error
        self._outbox.put_nowait(request)
        self.sent += 1

    def send_request(self, request) -> None:
        """Send a request exactly as built, malformed or not."""
        self._outbox.put_nowait(request)
        self.sent += 1

    def ack(self, response, names=None, error: str | None = None):
        """ACK (or NACK, with ``error``) a response, keeping the subscription."""
        if self.delta:
            self.send(response.type_url, nonce=response.nonce, error=error)
        else:
            self.send(
                response.type_url,
                names if names is not None else [],
                nonce=response.nonce,
                version=response.version_info if error is None else "",
                error=error,
            )

    async def recv(self, timeout: float = TIMEOUT):
        async with asyncio.timeout(timeout):
            response = await self.call.read()
        assert response is not grpc.aio.EOF, "the server ended the stream"
        self._check(response)
        self.responses.append(response)
        return response

    async def recv_type(self, type_url: str, timeout: float = TIMEOUT):
        response = await self.recv(timeout)
        assert response.type_url == type_url, (
            f"expected {types.short_name(type_url)}, "
            f"got {types.short_name(response.type_url)}"
        )
        return response

    def _check(self, response) -> None:
        assert response.type_url, "a response without a type_url"
        assert response.nonce.isdigit(), f"nonce {response.nonce!r}"
        nonce = int(response.nonce)
        assert nonce > self._last_nonce, "nonces must be new and rising"
        self._last_nonce = nonce
        if self.delta:
            assert response.system_version_info
            names = [r.name for r in response.resources]
            bodies = [r.resource for r in response.resources]
            assert all(r.version for r in response.resources)
            assert not set(names) & set(response.removed_resources)
        else:
            assert response.version_info, "a response without a version_info"
            bodies = list(response.resources)
            names = [types.resource_name(unpack(b)) for b in bodies]
        assert len(names) == len(set(names)), f"a name twice: {names}"
        assert all(b.type_url == response.type_url for b in bodies)

    async def close(self) -> None:
        self._outbox.put_nowait(None)
        self.call.cancel()
        await self.channel.close()


def names_of(response) -> list[str]:
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return sorted(r.name for r in response.resources)
    return sorted(types.resource_name(unpack(b)) for b in response.resources)


@contextlib.asynccontextmanager
async def ads_client(target: str, delta: bool = False):
    client = AdsClient(target, delta)
    try:
        yield client
    finally:
        await client.close()


async def wait_for(predicate, timeout: float = TIMEOUT, interval: float = 0.005):
    """Poll ``predicate`` until true; fail with its last value at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def only_stream(server):
    """The server side of the one stream open in a test."""
    streams = list(server.ads.streams.values())
    assert len(streams) == 1, f"{len(streams)} streams open"
    return streams[0]


async def handled(server, client: AdsClient) -> None:
    """Wait until the server has applied every request the client sent."""
    await wait_for(
        lambda: server.ads.streams and only_stream(server).requests >= client.sent
    )


class Barrier:
    """Proves that no response is on its way.

    The stream subscribes to one route, "barrier". Changing it makes the
    server send an RDS response; RDS goes out last in a round (R29), so if
    anything else were due, it would arrive first.
    """

    def __init__(self, client: AdsClient, cache, node_id: str = "n1") -> None:
        self.client = client
        self.cache = cache
        self.node_id = node_id
        self.count = 0

    def routes(self):
        return [route("barrier", cluster_name=f"b{self.count}")]

    async def subscribe(self) -> None:
        self.cache.set_resources(self.node_id, routes=self.routes())
        if self.client.delta:
            self.client.send(types.ROUTE, resource_names_subscribe=["barrier"])
        else:
            self.client.send(types.ROUTE, ["barrier"])
        self.client.ack(await self.client.recv_type(types.ROUTE), ["barrier"])

    async def check(self, server) -> None:
        """Once the server applied every request sent, nothing but the
        barrier's own response may come."""
        await handled(server, self.client)
        self.count += 1
        self.cache.set_resources(self.node_id, routes=self.routes())
        response = await self.client.recv()
        assert response.type_url == types.ROUTE, (
            f"unexpected {types.short_name(response.type_url)} response: {response}"
        )
        self.client.ack(response, ["barrier"])
