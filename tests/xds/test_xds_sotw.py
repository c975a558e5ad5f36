"""State-of-the-world ADS, one test per rule of shared/XDS_PROTOCOL.md.

A raw gRPC client plays Envoy; it checks nonce, version and duplicate-name
invariants on every response (see xds_client.py).
"""

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
    unpack,
    wait_for,
)

from monoceros.xds import types

CDS, EDS, LDS, RDS = types.CLUSTER, types.ENDPOINT, types.LISTENER, types.ROUTE


async def open_cds(client, node_id="n1"):
    """Subscribe to every cluster (Envoy's legacy wildcard) and ACK."""
    client.send(CDS, node_id=node_id)
    response = await client.recv_type(CDS)
    client.ack(response)
    return response


async def test_r1_request_without_type_url_is_invalid_argument(cache, target):
    cache.set_resources("n1", clusters=[cluster("a")])
    async with ads_client(target) as c:
        await open_cds(c)
        c.send("", [])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.recv()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "type_url" in err.value.details()


async def test_r2_first_request_without_node_is_refused(cache, target, registry):
    cache.set_resources("", clusters=[cluster("not-for-you")])
    async with ads_client(target) as c:
        c.send(CDS)  # no node
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.recv()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "node" in err.value.details()
    assert registry.get_sample_value("monoceros_xds_streams_refused_total") == 1


async def test_r2_node_of_first_request_serves_the_stream(cache, target):
    cache.set_resources("n1", clusters=[cluster("a")], endpoints=[cla("a", 1)])
    async with ads_client(target) as c:
        await open_cds(c)
        c.send(EDS, ["a"])  # no node: the first request's node applies
        assert names_of(await c.recv_type(EDS)) == ["a"]

        c.send(LDS, node_id="other")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.recv()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_r3_r4_version_and_nonce_per_type(cache, target):
    cache.set_resources("n1", clusters=[cluster("a")], listeners=[listener("l")])
    async with ads_client(target) as c:
        cds = await open_cds(c)
        c.send(LDS)
        lds = await c.recv_type(LDS)
        assert cds.version_info == cache.version("n1", CDS)
        assert lds.version_info == cache.version("n1", LDS)
        assert cds.version_info != lds.version_info
        assert cds.nonce != lds.nonce  # the client checks they rise


async def test_r5_r6_nack_detected_by_error_detail_and_not_resent(
    cache, target, server, registry
):
    cache.set_resources("n1", clusters=[cluster("a")])
    async with ads_client(target) as c:
        barrier = Barrier(c, cache)
        cds = await open_cds(c)
        await barrier.subscribe()
        cache.set_resources("n1", clusters=[cluster("a"), cluster("bad")])
        rejected = await c.recv_type(CDS)

        # A NACK echoes the last version the client accepted (here the
        # newest, as after a partial NACK): only error_detail tells (R6).
        c.send(CDS, [], nonce=rejected.nonce, version=cds.version_info,
               error="cluster bad: invalid")

        # R9: the rejected version is not sent again.
        await barrier.check(server)
        assert registry.get_sample_value(
            "monoceros_xds_nacks_total", {"type": "cds"}) == 1
        state = only_stream(server).states[CDS]
        assert state.last_nack.message == "cluster bad: invalid"
        assert state.version_acked == cds.version_info

        # A new version goes out at once.
        cache.set_resources("n1", clusters=[cluster("a")])
        assert names_of(await c.recv_type(CDS)) == ["a"]


async def test_r8_nack_holds_the_wait_for_ack(cache, target):
    cache.set_resources("n1", clusters=[cluster("a")], endpoints=[cla("a", 1)])
    async with ads_client(target) as c:
        await open_cds(c)
        c.send(EDS, ["a"])
        c.ack(await c.recv_type(EDS), ["a"])

        version = cache.set_endpoints("n1", cla("a", 2))
        response = await c.recv_type(EDS)
        c.ack(response, ["a"], error="rejected")
        assert not await cache.wait_acked("n1", EDS, version, timeout=0.2)

        newer = cache.set_endpoints("n1", cla("a", 3))
        c.ack(await c.recv_type(EDS), ["a"])
        assert await cache.wait_acked("n1", EDS, version, timeout=2)
        assert await cache.wait_acked("n1", EDS, newer, timeout=2)


async def test_r10_nack_still_changes_subscriptions(cache, target):
    cache.set_resources("n1", clusters=[cluster("a"), cluster("b")],
                        endpoints=[cla("a", 1), cla("b", 2)])
    async with ads_client(target) as c:
        await open_cds(c)
        c.send(EDS, ["a"])
        response = await c.recv_type(EDS)
        c.ack(response, ["a", "b"], error="a: rejected")
        assert names_of(await c.recv_type(EDS)) == ["b"]


async def test_r11_stale_nonce_changes_subscription_but_is_not_answered(
    cache, target, server
):
    cache.set_resources("n1", clusters=[cluster("a"), cluster("b")],
                        endpoints=[cla("a", 1), cla("b", 2)])
    async with ads_client(target) as c:
        barrier = Barrier(c, cache)
        await open_cds(c)
        await barrier.subscribe()
        c.send(EDS, ["a"])
        first = await c.recv_type(EDS)
        c.ack(first, ["a"])
        cache.set_endpoints("n1", cla("a", 5))
        second = await c.recv_type(EDS)

        # The client, not yet having read `second`, adds "b" with the old
        # nonce: no answer now...
        c.send(EDS, ["a", "b"], nonce=first.nonce, version=first.version_info)
        await barrier.check(server)

        # ...but "b" was kept, and goes out once `second` is ACKed.
        c.ack(second, ["a", "b"])
        assert names_of(await c.recv_type(EDS)) == ["b"]


async def test_r14_r15_legacy_wildcard_rules(cache, target, server):
    cache.set_resources("n1", clusters=[cluster("a"), cluster("b")])
    async with ads_client(target) as c:
        barrier = Barrier(c, cache)
        # Empty, never named: everything.
        assert names_of(await open_cds(c)) == ["a", "b"]
        await barrier.subscribe()

        # Names without "*": only those.
        c.send(CDS, ["a"], nonce=c.responses[0].nonce)
        assert names_of(await c.recv_type(CDS)) == ["a"]
        c.ack(c.responses[-1], ["a"])

        # "*" plus a name: everything again.
        c.send(CDS, ["*", "a"], nonce=c.responses[-1].nonce)
        response = await c.recv_type(CDS)
        assert names_of(response) == ["a", "b"]
        c.ack(response, ["*", "a"])

        # Empty after explicit names: nothing at all.
        c.send(CDS, [], nonce=response.nonce)
        empty = await c.recv_type(CDS)
        assert names_of(empty) == []
        c.ack(empty, [])
        await barrier.check(server)


async def test_r16_r17_unsubscribe_and_resubscribe_resends(cache, target, server):
    cache.set_resources("n1", clusters=[cluster("a"), cluster("b")],
                        endpoints=[cla("a", 1), cla("b", 2)])
    async with ads_client(target) as c:
        barrier = Barrier(c, cache)
        await open_cds(c)
        await barrier.subscribe()
        c.send(EDS, ["a", "b"])
        both = await c.recv_type(EDS)
        assert names_of(both) == ["a", "b"]
        c.ack(both, ["a", "b"])

        c.send(EDS, ["a"], nonce=both.nonce, version=both.version_info)
        await barrier.check(server)  # dropping "b" needs no answer

        # Same version as before, yet "b" is sent again (R17).
        c.send(EDS, ["a", "b"], nonce=both.nonce, version=both.version_info)
        again = await c.recv_type(EDS)
        assert names_of(again) == ["b"]
        assert again.version_info == both.version_info


async def test_r18_several_names_in_one_eds_request(cache, target):
    names = [f"c{i}" for i in range(5)]
    cache.set_resources("n1", clusters=[cluster(n) for n in names],
                        endpoints=[cla(n, 1000 + i) for i, n in enumerate(names)])
    async with ads_client(target) as c:
        await open_cds(c)
        c.send(EDS, names)
        assert names_of(await c.recv_type(EDS)) == names


async def test_r19_cds_is_full_state(cache, target):
    cache.set_resources("n1", clusters=[cluster("a"), cluster("b")])
    async with ads_client(target) as c:
        await open_cds(c)
        cache.set_resources("n1", clusters=[cluster("a"), cluster("b", 2)])
        changed = await c.recv_type(CDS)
        assert names_of(changed) == ["a", "b"]  # unchanged "a" included
        c.ack(changed)

        cache.set_resources("n1", clusters=[])
        gone = await c.recv_type(CDS)
        assert names_of(gone) == []  # zero clusters: delete them all


async def test_r20_eds_carries_changes_and_empty_clas(cache, target):
    cache.set_resources("n1", clusters=[cluster("a"), cluster("b")],
                        endpoints=[cla("a", 1), cla("b", 2)])
    async with ads_client(target) as c:
        await open_cds(c)
        c.send(EDS, ["a", "b"])
        c.ack(await c.recv_type(EDS), ["a", "b"])

        cache.set_endpoints("n1", cla("b"))  # zero endpoints
        response = await c.recv_type(EDS)
        assert names_of(response) == ["b"]
        assert len(unpack(response.resources[0]).endpoints[0].lb_endpoints) == 0


async def test_r22_unrequested_cla_not_sent_until_asked(cache, target, server):
    cache.set_resources("n1", clusters=[cluster("a")], endpoints=[cla("a", 1)])
    async with ads_client(target) as c:
        barrier = Barrier(c, cache)
        await open_cds(c)
        await barrier.subscribe()
        c.send(EDS, ["a"])
        eds = await c.recv_type(EDS)
        c.ack(eds, ["a"])

        cache.set_endpoints("n1", cla("x", 9))
        await barrier.check(server)

        c.send(EDS, ["a", "x"], nonce=eds.nonce)
        assert names_of(await c.recv_type(EDS)) == ["x"]


async def test_r23_no_response_without_change(cache, target, server):
    cache.set_resources("n1", clusters=[cluster("a")])
    async with ads_client(target) as c:
        barrier = Barrier(c, cache)
        await open_cds(c)
        await barrier.subscribe()
        cache.set_resources("n1", clusters=[cluster("a")])
        await barrier.check(server)


async def test_r25_missing_names_are_pushed_when_they_appear(cache, target, server):
    cache.set_resources("n1", clusters=[cluster("a")])
    async with ads_client(target) as c:
        barrier = Barrier(c, cache)
        await open_cds(c)
        await barrier.subscribe()
        c.send(EDS, ["a"])
        await barrier.check(server)  # nothing to say, and no hot loop

        cache.set_endpoints("n1", cla("a", 1))
        assert names_of(await c.recv_type(EDS)) == ["a"]


async def test_r27_changed_cluster_gets_its_cla_again(cache, target):
    cache.set_resources("n1", clusters=[cluster("a")], endpoints=[cla("a", 1)])
    async with ads_client(target) as c:
        await open_cds(c)
        c.send(EDS, ["a"])
        first = await c.recv_type(EDS)
        c.ack(first, ["a"])

        # Envoy re-warms "a" and will not ask for its CLA again.
        cache.set_resources("n1", clusters=[cluster("a", connect_timeout=3)])
        c.ack(await c.recv_type(CDS))
        again = await c.recv_type(EDS)
        assert names_of(again) == ["a"]
        assert again.version_info == first.version_info  # unchanged, resent


async def test_r29_order_clusters_endpoints_listeners_routes(cache, target, server):
    async with ads_client(target) as c:
        c.send(CDS, node_id="n1")
        c.send(LDS)
        c.send(EDS, ["a"])
        c.send(RDS, ["r"])
        await handled(server, c)  # all four subscribed before anything exists
        cache.set_resources("n1", routes=[route("r", "a")], listeners=[listener("l")],
                            endpoints=[cla("a", 1)], clusters=[cluster("a")])
        got = [(await c.recv()).type_url for _ in range(4)]
        assert got == [CDS, EDS, LDS, RDS]


async def test_r29_removals_after_the_updates(cache, target):
    cache.set_resources("n1", clusters=[cluster("old")], routes=[route("r", "old")])
    async with ads_client(target) as c:
        await open_cds(c)
        c.send(RDS, ["r"])
        c.ack(await c.recv_type(RDS), ["r"])

        # Move the route from "old" to "new": "old" must outlive the route
        # that points at it.
        cache.set_resources("n1", clusters=[cluster("new")], routes=[route("r", "new")])
        union = await c.recv_type(CDS)
        assert names_of(union) == ["new", "old"]
        assert union.version_info != cache.version("n1", CDS)
        c.ack(union)
        c.ack(await c.recv_type(RDS), ["r"])
        final = await c.recv_type(CDS)
        assert names_of(final) == ["new"]
        assert final.version_info == cache.version("n1", CDS)


async def test_r34_first_wildcard_request_answered_even_empty(cache, target):
    cache.set_resources("n1", endpoints=[cla("a", 1)])  # no cluster at all
    async with ads_client(target) as c:
        c.send(CDS, node_id="n1")
        c.send(LDS)
        assert names_of(await c.recv_type(CDS)) == []
        assert names_of(await c.recv_type(LDS)) == []


async def test_r35_r36_reconnect_with_old_version_gets_everything(cache, target):
    cache.set_resources("n1", clusters=[cluster("a")], endpoints=[cla("a", 1)])
    version = cache.version("n1", EDS)
    async with ads_client(target) as c:
        # An Envoy back from an earlier stream (or an earlier server) says
        # what it had; it is sent everything again all the same.
        c.send(CDS, node_id="n1", version="00000000-7")
        c.send(EDS, ["a"], version=version)
        assert names_of(await c.recv_type(CDS)) == ["a"]
        assert names_of(await c.recv_type(EDS)) == ["a"]


async def test_updates_coalesce_while_unacked(cache, target):
    cache.set_resources("n1", clusters=[cluster("a")], endpoints=[cla("a", 1)])
    async with ads_client(target) as c:
        await open_cds(c)
        c.send(EDS, ["a"])
        pending = await c.recv_type(EDS)

        for port in range(2, 12):
            newest = cache.set_endpoints("n1", cla("a", port))
        c.ack(pending, ["a"])
        response = await c.recv_type(EDS)
        assert response.version_info == newest
        endpoint = unpack(response.resources[0]).endpoints[0].lb_endpoints[0]
        assert endpoint.endpoint.address.socket_address.port_value == 11


async def test_wait_acked_follows_the_ack(cache, target, server):
    cache.set_resources("n1", clusters=[cluster("a")], endpoints=[cla("a", 1)])
    async with ads_client(target) as c:
        await open_cds(c)
        c.send(EDS, ["a"])
        c.ack(await c.recv_type(EDS), ["a"])

        version = cache.set_endpoints("n1", cla("a", 2))
        response = await c.recv_type(EDS)
        assert not await cache.wait_acked("n1", EDS, version, timeout=0.05)
        c.ack(response, ["a"])
        assert await cache.wait_acked("n1", EDS, version, timeout=2)

        # A CLA this stream never asked for: nothing to wait for.
        other = cache.set_endpoints("n1", cla("zzz", 1))
        assert await cache.wait_acked("n1", EDS, other, timeout=2)


async def test_no_snapshot_for_node_holds_the_answer(cache, target):
    async with ads_client(target) as c:
        c.send(CDS, node_id="late")
        await wait_for(lambda: cache.stream_count("late") == 1)
        cache.set_resources("late", clusters=[cluster("a")])
        assert names_of(await c.recv_type(CDS)) == ["a"]
