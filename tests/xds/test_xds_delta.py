"""Incremental (delta) ADS, one test per rule of shared/XDS_PROTOCOL.md."""

import grpc
import pytest
from xds_client import (
    Barrier,
    ads_client,
    cla,
    cluster,
    handled,
    listener,
    names_of,
    only_stream,
    route,
)

from monoceros.xds import types

CDS, EDS, LDS, RDS = types.CLUSTER, types.ENDPOINT, types.LISTENER, types.ROUTE


async def open_cds(client, node_id="n1", **extra):
    client.send(CDS, node_id=node_id, **extra)
    response = await client.recv_type(CDS)
    client.ack(response)
    return response


async def test_r1_request_without_type_url_is_invalid_argument(cache, target):
    cache.set_resources("n1", clusters=[cluster("a")])
    async with ads_client(target, delta=True) as c:
        await open_cds(c)
        c.send("")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.recv()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_r2_first_request_without_node_is_refused(cache, target):
    cache.set_resources("", clusters=[cluster("not-for-you")])
    async with ads_client(target, delta=True) as c:
        c.send(CDS)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.recv()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_r30_versions_per_resource_and_nonces(cache, target):
    cache.set_resources("n1", clusters=[cluster("a"), cluster("b")])
    async with ads_client(target, delta=True) as c:
        response = await open_cds(c)
        versions = {r.name: r.version for r in response.resources}
        assert versions["a"] != versions["b"]
        assert response.system_version_info == cache.version("n1", CDS)


async def test_r31_only_changes_and_removals(cache, target):
    cache.set_resources("n1", clusters=[cluster("a"), cluster("b")])
    async with ads_client(target, delta=True) as c:
        await open_cds(c)
        cache.set_resources("n1", clusters=[cluster("a", 5)])
        response = await c.recv_type(CDS)
        assert names_of(response) == ["a"]
        assert list(response.removed_resources) == ["b"]


async def test_r9_nack_not_answered_with_the_same_version(
    cache, target, server, registry
):
    cache.set_resources("n1", clusters=[cluster("a")])
    async with ads_client(target, delta=True) as c:
        barrier = Barrier(c, cache)
        await open_cds(c)
        await barrier.subscribe()
        cache.set_resources("n1", clusters=[cluster("a", 7)])
        c.ack(await c.recv_type(CDS), error="a: rejected")
        await barrier.check(server)
        assert registry.get_sample_value(
            "monoceros_xds_nacks_total", {"type": "cds"}) == 1
        assert only_stream(server).states[CDS].last_nack.message == "a: rejected"


async def test_r12_stale_nonce_still_changes_subscriptions(cache, target):
    cache.set_resources("n1", clusters=[cluster("a"), cluster("b")],
                        endpoints=[cla("a", 1), cla("b", 2)])
    async with ads_client(target, delta=True) as c:
        await open_cds(c)
        c.send(EDS, resource_names_subscribe=["a"])
        first = await c.recv_type(EDS)
        c.ack(first)
        # A spontaneous subscription, with an old nonce: honoured.
        c.send(EDS, nonce="1", resource_names_subscribe=["b"])
        assert names_of(await c.recv_type(EDS)) == ["b"]


async def test_r15_legacy_wildcard_and_explicit_star(cache, target, server):
    cache.set_resources("n1", clusters=[cluster("a"), cluster("b")])
    async with ads_client(target, delta=True) as c:
        barrier = Barrier(c, cache)
        assert names_of(await open_cds(c)) == ["a", "b"]  # empty first: wildcard
        await barrier.subscribe()

        c.send(CDS, resource_names_unsubscribe=["*"])
        await barrier.check(server)  # a pure unsubscribe needs no answer
        cache.set_resources("n1", clusters=[cluster("a", 3), cluster("b")])
        await barrier.check(server)  # no longer interested

        c.send(CDS, resource_names_subscribe=["*"])
        assert names_of(await c.recv_type(CDS)) == ["a", "b"]


async def test_r32_subscribed_names_always_answered(cache, target):
    cache.set_resources("n1", clusters=[cluster("a")], endpoints=[cla("a", 1)])
    async with ads_client(target, delta=True) as c:
        await open_cds(c)
        c.send(EDS, resource_names_subscribe=["a"])
        c.ack(await c.recv_type(EDS))
        # The client "forgot" it: subscribing again gets it again.
        c.send(EDS, resource_names_subscribe=["a"])
        assert names_of(await c.recv_type(EDS)) == ["a"]


async def test_r32_unknown_unsubscribe_accepted(cache, target, server):
    cache.set_resources("n1", clusters=[cluster("a")])
    async with ads_client(target, delta=True) as c:
        barrier = Barrier(c, cache)
        await open_cds(c)
        await barrier.subscribe()
        c.send(EDS, resource_names_unsubscribe=["never-heard-of"])
        await barrier.check(server)


async def test_r32_dropping_a_name_still_under_wildcard_resends_it(cache, target):
    cache.set_resources("n1", clusters=[cluster("a"), cluster("b")])
    async with ads_client(target, delta=True) as c:
        c.send(CDS, node_id="n1", resource_names_subscribe=["*", "a"])
        c.ack(await c.recv_type(CDS))
        c.send(CDS, resource_names_unsubscribe=["a"])
        response = await c.recv_type(CDS)
        assert names_of(response) == ["a"]


async def test_r26_missing_subscribed_name_reported_removed(cache, target, server):
    cache.set_resources("n1", clusters=[cluster("a")], endpoints=[cla("a", 1)])
    async with ads_client(target, delta=True) as c:
        barrier = Barrier(c, cache)
        await open_cds(c)
        await barrier.subscribe()
        c.send(EDS, resource_names_subscribe=["a", "ghost"])
        response = await c.recv_type(EDS)
        assert names_of(response) == ["a"]
        assert list(response.removed_resources) == ["ghost"]
        c.ack(response)

        cache.set_endpoints("n1", cla("a", 2))
        again = await c.recv_type(EDS)
        assert list(again.removed_resources) == []  # said once, not again
        c.ack(again)

        cache.set_endpoints("n1", cla("ghost", 3))
        assert names_of(await c.recv_type(EDS)) == ["ghost"]


async def test_r33_reconnect_with_initial_versions(cache, target):
    cache.set_resources("n1", clusters=[cluster("a"), cluster("b")])
    async with ads_client(target, delta=True) as c:
        held = {r.name: r.version for r in (await open_cds(c)).resources}

    cache.set_resources("n1", clusters=[cluster("a"), cluster("c")])
    async with ads_client(target, delta=True) as c:
        c.send(CDS, node_id="n1", initial_resource_versions=held)
        response = await c.recv_type(CDS)
        assert names_of(response) == ["c"]  # "a" is held as it is
        assert list(response.removed_resources) == ["b"]


async def test_r34_first_wildcard_answered_even_empty(cache, target):
    cache.set_resources("n1", endpoints=[cla("x", 1)])
    async with ads_client(target, delta=True) as c:
        response = await open_cds(c)
        assert names_of(response) == []
        assert list(response.removed_resources) == []

    # Also when everything the client holds is current.
    cache.set_resources("n1", clusters=[cluster("a")])
    held = {"a": cache.snapshot("n1").of(CDS).resources["a"].version}
    async with ads_client(target, delta=True) as c:
        response = await open_cds(c, initial_resource_versions=held)
        assert names_of(response) == []


async def test_r27_changed_cluster_gets_its_cla_again(cache, target):
    cache.set_resources("n1", clusters=[cluster("a")], endpoints=[cla("a", 1)])
    async with ads_client(target, delta=True) as c:
        await open_cds(c)
        c.send(EDS, resource_names_subscribe=["a"])
        c.ack(await c.recv_type(EDS))

        cache.set_resources("n1", clusters=[cluster("a", connect_timeout=3)])
        c.ack(await c.recv_type(CDS))
        assert names_of(await c.recv_type(EDS)) == ["a"]


async def test_r29_order_and_removals_last(cache, target, server):
    cache.set_resources("n1", clusters=[cluster("old")], routes=[route("r", "old")],
                        listeners=[listener("l")])
    async with ads_client(target, delta=True) as c:
        await open_cds(c)
        c.send(LDS)
        c.ack(await c.recv_type(LDS))
        c.send(RDS, resource_names_subscribe=["r"])
        c.ack(await c.recv_type(RDS))
        c.send(EDS, resource_names_subscribe=["new"])
        c.ack(await c.recv_type(EDS))  # "new" does not exist yet (R26)
        await handled(server, c)

        cache.set_resources("n1", clusters=[cluster("new")], routes=[route("r", "new")],
                            endpoints=[cla("new", 1)], listeners=[listener("l", 1)])
        cds = await c.recv_type(CDS)
        assert names_of(cds) == ["new"]
        assert list(cds.removed_resources) == []  # "old" outlives its route
        assert (await c.recv()).type_url == EDS
        assert (await c.recv()).type_url == LDS
        assert (await c.recv()).type_url == RDS
        c.ack(cds)
        removal = await c.recv_type(CDS)
        assert list(removal.removed_resources) == ["old"]


async def test_updates_coalesce_while_unacked(cache, target):
    cache.set_resources("n1", clusters=[cluster("a")], endpoints=[cla("a", 1)])
    async with ads_client(target, delta=True) as c:
        await open_cds(c)
        c.send(EDS, resource_names_subscribe=["a"])
        pending = await c.recv_type(EDS)
        for port in range(2, 12):
            newest = cache.set_endpoints("n1", cla("a", port))
        c.ack(pending)
        response = await c.recv_type(EDS)
        assert response.system_version_info == newest
        assert await cache.wait_acked("n1", EDS, newest, timeout=0.05) is False
        c.ack(response)
        assert await cache.wait_acked("n1", EDS, newest, timeout=2)
