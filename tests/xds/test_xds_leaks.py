"""Nothing leaks per stream: thousands opened and dropped at awkward moments
leave asyncio tasks, cache watches and memory where they were."""

import asyncio
import gc
import random

import psutil
import pytest
from xds_client import AdsClient, cla, cluster, wait_for

from monoceros.xds import types

pytestmark = pytest.mark.slow
STREAMS = 2000
BATCH = 100


async def one_stream(target, when: str, delta: bool) -> None:
    client = AdsClient(target, delta=delta)
    try:
        client.send(types.CLUSTER, node_id="n1")
        if when == "after-request":
            await asyncio.sleep(0)
        elif when == "mid-push":
            if delta:
                client.send(types.ENDPOINT, resource_names_subscribe=["big"])
            else:
                client.send(types.ENDPOINT, ["big"])
            await client.recv()  # the CDS response; EDS may be in flight
        else:
            await client.recv()
            client.ack(client.responses[-1])
    finally:
        await client.close()


async def churn(target, count: int) -> None:
    rng = random.Random(7)
    for start in range(0, count, BATCH):
        await asyncio.gather(*(
            one_stream(target, rng.choice(["after-request", "mid-push", "acked"]),
                       delta=bool(i % 2))
            for i in range(start, min(start + BATCH, count))
        ))


async def test_streams_leave_nothing_behind(cache, server, target):
    ports = range(20000, 21000)
    cache.set_resources("n1", clusters=[cluster("big")],
                        endpoints=[cla("big", *ports)])
    process = psutil.Process()

    await churn(target, BATCH * 2)  # warm up: gRPC and protobuf caches
    await wait_for(lambda: not server.ads.streams)
    gc.collect()
    tasks = len(asyncio.all_tasks())
    rss = process.memory_info().rss
    fds = process.num_fds()

    await churn(target, STREAMS)

    await wait_for(lambda: not server.ads.streams, timeout=10)
    await wait_for(lambda: len(asyncio.all_tasks()) <= tasks, timeout=10)
    assert cache.watch_count() == 0
    # The clients' own sockets close with their channels: allow a few that
    # grpc keeps for its internal wake-ups, not one per stream.
    await wait_for(lambda: process.num_fds() <= fds + 8, timeout=10)
    assert server.metrics.streams.labels(variant="sotw")._value.get() == 0
    assert server.metrics.streams.labels(variant="delta")._value.get() == 0
    gc.collect()
    grown = process.memory_info().rss - rss
    # Ten times the streams of the warm-up: a per-stream leak of even 5 kB
    # would show as 10 MB.
    assert grown < 10 * 1024 * 1024, f"RSS grew by {grown / 1e6:.1f} MB"
