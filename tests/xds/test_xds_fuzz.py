"""The xDS server under abuse: random, malformed and oversized requests.

Every test runs the real server in-process (tests/xds/conftest.py) with one
well-behaved SotW stream open throughout, the way a healthy Envoy would be
while another client misbehaves. After each abusive stream the server must
still answer the good one (an endpoint update reaches it and is ACKed), the
abusive stream must have ended with a gRPC status the protocol allows (or
been answered per the protocol, every response passing the invariants
checked by xds_client.AdsClient), and no stream may be left open.

A servicer that raised would end its stream with UNKNOWN (grpc's
"Unexpected <exception>") and grpc would log "Exception calling
application"; both are looked for.
"""

from __future__ import annotations

import asyncio
import logging
import os

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xds_client import AdsClient, ads_client, cla, cluster, names_of, wait_for

from monoceros.xds import types

CDS, EDS, LDS, RDS = types.CLUSTER, types.ENDPOINT, types.LISTENER, types.ROUTE
GOOD = "good"
# What an abusive stream may end with: the server's own refusal, grpc's
# size limit, or the client leaving.
ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
}
MAX_RECEIVE = 16 * 1024 * 1024  # the server's grpc.max_receive_message_length
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Watcher:
    """The well-behaved stream: all clusters, and the endpoints of one."""

    def __init__(self, target: str, cache, server) -> None:
        self.client = AdsClient(target)
        self.cache = cache
        self.server = server
        self.port = 1000
        self.stream_id = 0

    async def open(self) -> None:
        self.cache.set_resources(
            GOOD, clusters=[cluster("svc")], endpoints=[cla("svc", self.port)]
        )
        self.client.send(CDS, node_id=GOOD)
        self.client.ack(await self.client.recv_type(CDS))
        self.client.send(EDS, ["svc"])
        self.client.ack(await self.client.recv_type(EDS), ["svc"])
        (self.stream_id,) = self.server.ads.streams

    def others(self) -> list:
        """The server's side of every stream but this one."""
        return [s for i, s in self.server.ads.streams.items() if i != self.stream_id]

    async def still_served(self) -> None:
        """A new endpoint set reaches the stream, and the ACK is taken."""
        self.port += 1
        version = self.cache.set_endpoints(GOOD, cla("svc", self.port))
        response = await self.client.recv_type(EDS)
        ports = [
            lb.endpoint.address.socket_address.port_value
            for body in response.resources
            for group in _unpack_cla(body).endpoints
            for lb in group.lb_endpoints
        ]
        assert ports == [self.port]
        self.client.ack(response, ["svc"])
        assert await self.cache.wait_acked(GOOD, EDS, version, 5.0)


def stream_of(server, node_id: str):
    return next(s for s in server.ads.streams.values() if s.node_id == node_id)


async def handled(server, client: AdsClient) -> None:
    """Wait until the server has read every request the client sent."""
    await wait_for(lambda: stream_of(server, "n1").requests >= client.sent)


def _unpack_cla(body):
    from envoy.config.endpoint.v3 import endpoint_pb2

    out = endpoint_pb2.ClusterLoadAssignment()
    body.Unpack(out)
    return out


@pytest.fixture
async def watcher(target, cache, server):
    w = Watcher(target, cache, server)
    await w.open()
    yield w
    await w.client.close()


@pytest.fixture
def grpc_errors(caplog):
    """Records of exceptions escaping a servicer, as grpc logs them."""
    caplog.set_level(logging.ERROR, logger="grpc")
    return lambda: [
        r for r in caplog.records
        if r.name.startswith("grpc") and "Exception" in r.getMessage()
    ]


class Responses:
    """Reads a stream's responses all along, as a client must: grpc holds a
    stream's status back until the responses before it have been read."""

    def __init__(self, call) -> None:
        self.call = call
        self.received: list = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> grpc.StatusCode:
        while True:
            try:
                response = await self.call.read()
            except grpc.aio.AioRpcError as exc:
                assert exc.code() in ALLOWED, (exc.code(), exc.details())
                return exc.code()
            if response is grpc.aio.EOF:
                return grpc.StatusCode.OK
            self.received.append(response)

    @property
    def ended(self) -> bool:
        return self.task.done()

    async def settle(self, quiet: float = 0.1) -> grpc.StatusCode | None:
        """The status once the stream ends, or None once no response has
        come for `quiet` seconds."""
        seen = -1
        while not self.task.done() and seen < len(self.received):
            seen = len(self.received)
            await asyncio.wait([self.task], timeout=quiet)
        if self.task.done():
            return self.task.result()
        self.task.cancel()
        return None


async def drain(call, quiet: float = 0.1) -> tuple[list, grpc.StatusCode | None]:
    responses = Responses(call)
    code = await responses.settle(quiet)
    return responses.received, code


async def after_abuse(server, watcher, grpc_errors, code) -> None:
    assert code is None or code == grpc.StatusCode.OK or code in ALLOWED, code
    await wait_for(lambda: len(server.ads.streams) == 1)  # the watcher's
    await watcher.still_served()
    assert not grpc_errors()


# ------------------------------------------------------ random requests


NAMES = st.one_of(
    st.sampled_from(["svc", "*", "", "a", "listener", "route"]),
    st.text(max_size=20),
)
TYPE_URLS = st.one_of(
    st.sampled_from([CDS, EDS, LDS, RDS]),
    st.sampled_from(["", "type.googleapis.com/envoy.config.core.v3.Nope",
                     "type.googleapis.com/", CDS + "x", "*"]),
    st.text(max_size=40),
)  # fmt: skip
NONCES = st.one_of(
    st.sampled_from(["", "1", "2", "3", "0", "-1", "99999999999999999999"]),
    st.text(max_size=8),
)


@st.composite
def sotw_requests(draw):
    request = discovery_pb2.DiscoveryRequest(
        type_url=draw(TYPE_URLS),
        resource_names=draw(st.lists(NAMES, max_size=8)),
        response_nonce=draw(NONCES),
        version_info=draw(st.text(max_size=8)),
    )
    _maybe_node_and_error(draw, request)
    return request


@st.composite
def delta_requests(draw):
    request = discovery_pb2.DeltaDiscoveryRequest(
        type_url=draw(TYPE_URLS),
        resource_names_subscribe=draw(st.lists(NAMES, max_size=8)),
        resource_names_unsubscribe=draw(st.lists(NAMES, max_size=4)),
        initial_resource_versions=draw(
            st.dictionaries(NAMES, st.text(max_size=6), max_size=4)
        ),
        response_nonce=draw(NONCES),
    )
    _maybe_node_and_error(draw, request)
    return request


def _maybe_node_and_error(draw, request) -> None:
    node = draw(
        st.one_of(st.none(), st.sampled_from([GOOD, "n1"]), st.text(max_size=8))
    )
    if node is not None:
        request.node.id = node
    if draw(st.booleans()):
        request.error_detail.code = draw(st.integers(0, 16))
        request.error_detail.message = draw(st.text(max_size=30))


@FUZZ
@given(
    delta=st.booleans(),
    first_node=st.sampled_from([GOOD, "n1", ""]),
    data=st.data(),
)
async def test_random_requests(server, target, cache, watcher, grpc_errors,
                               delta, first_node, data):
    cache.set_resources("n1", clusters=[cluster("a")], endpoints=[cla("a", 1)])
    requests = data.draw(
        st.lists(delta_requests() if delta else sotw_requests(), max_size=12)
    )
    if requests and first_node:
        requests[0].node.id = first_node

    # One request at a time, each once the server has read the last: a
    # client still writing after the server ended the stream gets a status
    # made up by its own grpc library (INTERNAL), hiding the server's.
    client = AdsClient(target, delta=delta)
    responses = Responses(client.call)
    try:
        for request in requests:
            client.send_request(request)
            await wait_for(
                lambda: responses.ended
                or any(s.requests >= client.sent for s in watcher.others())
            )
            if responses.ended:
                break
        code = await responses.settle()
        for response in responses.received:
            client._check(response)  # nonce, version and name invariants
    finally:
        responses.task.cancel()
        await client.close()
    await after_abuse(server, watcher, grpc_errors, code)


@FUZZ
@given(payload=st.binary(max_size=512), after_valid=st.booleans())
async def test_random_bytes_as_a_message(server, target, watcher, grpc_errors,
                                         payload, after_valid):
    """Bytes that may not parse, as the first message of a stream or after
    a valid one (then read by the stream's own reader)."""
    valid = discovery_pb2.DiscoveryRequest(type_url=CDS)
    valid.node.id = "n1"
    messages = [valid.SerializeToString(), payload] if after_valid else [payload]
    async with grpc.aio.insecure_channel(target) as channel:
        method = channel.stream_stream(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
            "StreamAggregatedResources"
        )  # no serializers: the bytes go out as they are
        call = method(iter(messages))
        _, code = await drain(call)
        call.cancel()
    await after_abuse(server, watcher, grpc_errors, code)


# ---------------------------------------------------- directed abuse


async def test_missing_node_is_refused(server, target, watcher, grpc_errors):
    for delta in (False, True):
        async with ads_client(target, delta=delta) as c:
            c.send(CDS)
            _, code = await drain(c.call, quiet=5)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        await after_abuse(server, watcher, grpc_errors, code)


async def test_unknown_type_urls_are_ignored(server, target, cache, watcher,
                                            grpc_errors):
    cache.set_resources("n1", clusters=[cluster("a")])
    async with ads_client(target) as c:
        c.send(CDS, node_id="n1")
        c.ack(await c.recv_type(CDS))
        for i in range(200):
            c.send(f"type.googleapis.com/made.up.Type{i}", ["x"])
            c.send(f"type.googleapis.com/made.up.Type{i}", [])
        await handled(server, c)
        await watcher.still_served()
        # The stream is still served, and was sent nothing meanwhile: the
        # next response is the one a cluster change causes.
        cache.set_resources("n1", clusters=[cluster("a"), cluster("b")])
        response = await c.recv_type(CDS)
        assert {_cluster(body).name for body in response.resources} == {"a", "b"}
    await after_abuse(server, watcher, grpc_errors, None)


def _cluster(body):
    from envoy.config.cluster.v3 import cluster_pb2

    out = cluster_pb2.Cluster()
    body.Unpack(out)
    return out


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_huge_name_lists(server, target, watcher, grpc_errors, delta):
    # 50,000 names, 2.4 MB: under the 16 MiB limit, so it must be served.
    names = [f"cluster-{i:06d}-{'x' * 32}" for i in range(50_000)]
    async with ads_client(target, delta=delta) as c:
        if delta:
            c.send(EDS, node_id=GOOD, resource_names_subscribe=names)
        else:
            c.send(EDS, names, node_id=GOOD)
        responses, code = await drain(c.call, quiet=2)
        assert code is None, code
        if delta:  # none exists: each is reported removed (R26), once
            assert len(responses) == 1
            assert len(responses[0].removed_resources) == len(names)
        else:  # none exists: no answer (R25)
            assert responses == []
        await watcher.still_served()
    await after_abuse(server, watcher, grpc_errors, None)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_oversized_message_is_refused(server, target, watcher, grpc_errors,
                                            delta):
    names = ["n" * 1000] * (MAX_RECEIVE // 1000 + 100)
    async with ads_client(target, delta=delta) as c:
        if delta:
            c.send(EDS, node_id=GOOD, resource_names_subscribe=names)
        else:
            c.send(EDS, names, node_id=GOOD)
        _, code = await drain(c.call, quiet=10)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    await after_abuse(server, watcher, grpc_errors, code)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_nack_storm_gets_no_answer_and_spares_others(
    server, target, cache, watcher, grpc_errors, delta
):
    """NACKs of the current response, stale nonces and bogus ones, by the
    thousand: the server holds on (R9), answers none of them, and the next
    real change still reaches the stream."""
    cache.set_resources("n1", clusters=[cluster("a")], endpoints=[cla("a", 1)])
    async with ads_client(target, delta=delta) as c:
        c.send(CDS, node_id="n1")
        first = await c.recv_type(CDS)
        for i in range(3000):
            nonce = (first.nonce, "0", str(i), "bogus")[i % 4]
            c.send(CDS, nonce=nonce, error="rejected by the fuzzer")
            if i % 1000 == 0:
                await watcher.still_served()  # others are served meanwhile
        await handled(server, c)
        assert stream_of(server, "n1").states[CDS].nacks == 1  # the one that matched

        # Nothing was sent in answer: the next response is the one the next
        # change causes.
        cache.set_resources("n1", clusters=[cluster("a"), cluster("b")],
                            endpoints=[cla("a", 1)])
        update = await c.recv_type(CDS)
        assert names_of(update) == (["b"] if delta else ["a", "b"])
    await after_abuse(server, watcher, grpc_errors, None)


async def test_many_abusive_streams_at_once(server, target, watcher, grpc_errors):
    """A hundred streams opened and abandoned mid-request, side by side."""

    async def one(i: int) -> None:
        client = AdsClient(target, delta=bool(i % 2))
        try:
            if i % 3:
                client.send(CDS, node_id=f"n{i}")
            else:
                client.send_request(
                    discovery_pb2.DiscoveryRequest(type_url=os.urandom(4).hex())
                )
            await asyncio.sleep(0)
        finally:
            await client.close()

    await asyncio.gather(*(one(i) for i in range(100)))
    await after_abuse(server, watcher, grpc_errors, None)
