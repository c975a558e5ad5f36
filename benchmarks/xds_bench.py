"""xDS server benchmark: push-to-ACK latency and fan-out, against a floor.

Run with ``python -m benchmarks.xds_bench``. In one run it measures:

1. push-to-ACK latency of endpoint updates to one real Envoy, through
   Monoceros's SnapshotCache and XdsServer (``set_endpoints`` until
   ``wait_acked`` returns), and through a minimal ADS responder written only
   for this benchmark (write the response, read the ACK): the floor, which
   is mostly grpc.aio's own cost;
2. the time to fan one update of a 1,000-endpoint cluster out to 50 ADS
   streams (raw gRPC clients in another process, which ACK) until all have
   ACKed, with the server process's CPU time, for both servers.

Ratios are Monoceros over the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from monoceros.xds import types
from monoceros.xds.cache import SnapshotCache
from monoceros.xds.server import XdsServer

HERE = os.path.dirname(os.path.abspath(__file__))
# The Envoy launcher and resource builders are the tests' own.
sys.path.insert(0, os.path.join(HERE, "..", "tests", "xds"))

from envoy_harness import Envoy, find_envoy  # noqa: E402
from xds_client import cla, cluster  # noqa: E402

NODE = "bench"
UPDATES = 300
FANOUT_STREAMS = 50
FANOUT_ENDPOINTS = 1000
FANOUT_ROUNDS = 20


class FloorAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """The least an ADS server can do: answer CDS and EDS, push, read ACKs.

    No cache, no subscriptions, no versions beyond a counter: only for
    measuring what grpc.aio itself costs.
    """

    def __init__(self, clusters, assignment) -> None:
        self.clusters = [types_any(c) for c in clusters]
        self.assignment = types_any(assignment)
        self.streams: list[tuple[grpc.aio.ServicerContext, dict]] = []
        self.counter = 0

    async def StreamAggregatedResources(self, requests, context):  # noqa: N802
        pending: dict[str, asyncio.Future] = {}
        entry = (context, pending)
        self.streams.append(entry)
        try:
            async for request in requests:
                future = pending.pop(request.response_nonce, None)
                if future is not None:
                    future.set_result(None)
                elif not request.response_nonce:
                    await self._initial(context, request.type_url)
        finally:
            self.streams.remove(entry)

    async def _initial(self, context, type_url: str) -> None:
        resources = {types.CLUSTER: self.clusters,
                     types.ENDPOINT: [self.assignment]}.get(type_url, [])
        await self._write(context, type_url, resources)

    async def _write(self, context, type_url, resources) -> str:
        self.counter += 1
        nonce = str(self.counter)
        response = discovery_pb2.DiscoveryResponse(
            version_info=nonce, nonce=nonce, type_url=type_url
        )
        response.resources.extend(resources)
        await context.write(response)
        return nonce

    async def push(self, assignment) -> None:
        """Send a CLA on every stream; return once every stream ACKed it."""
        self.assignment = types_any(assignment)
        loop = asyncio.get_running_loop()
        waits = []
        for context, pending in list(self.streams):
            future = loop.create_future()
            nonce = str(self.counter + 1)
            pending[nonce] = future
            await self._write(context, types.ENDPOINT, [self.assignment])
            waits.append(future)
        await asyncio.gather(*waits)


def types_any(message):
    body = any_pb2.Any()
    body.Pack(message)
    return body


async def start_floor(path: str, floor: FloorAds) -> grpc.aio.Server:
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(floor, server)
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    return server


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# -- 1. one Envoy --------------------------------------------------------------

async def envoy_ready(envoy: Envoy, port: int) -> None:
    deadline = time.monotonic() + 15
    while (await envoy.clusters()).get("svc") != [port]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"Envoy did not converge:\n{envoy.log()}")
        await asyncio.sleep(0.02)


async def latency_monoceros(binary: str, workdir: str) -> list[float]:
    cache = SnapshotCache()
    cache.set_resources(NODE, clusters=[cluster("svc")], endpoints=[cla("svc", 1)])
    path = f"{workdir}/m.sock"
    server = XdsServer(cache, unix_socket=path)
    await server.start()
    envoy = Envoy(binary, workdir, NODE, path, delta=False)
    envoy.start()
    try:
        await envoy_ready(envoy, 1)
        samples = []
        for i in range(UPDATES):
            started = time.perf_counter()
            version = cache.set_endpoints(NODE, cla("svc", 2 + i, 3, 4))
            if not await cache.wait_acked(NODE, types.ENDPOINT, version, 5):
                raise RuntimeError("Envoy did not ACK")
            samples.append(time.perf_counter() - started)
        return samples
    finally:
        await envoy.stop()
        await server.stop(0)


async def latency_floor(binary: str, workdir: str) -> list[float]:
    floor = FloorAds([cluster("svc")], cla("svc", 1))
    path = f"{workdir}/f.sock"
    server = await start_floor(path, floor)
    envoy = Envoy(binary, workdir, NODE, path, delta=False)
    envoy.start()
    try:
        await envoy_ready(envoy, 1)
        samples = []
        for i in range(UPDATES):
            started = time.perf_counter()
            await floor.push(cla("svc", 2 + i, 3, 4))
            samples.append(time.perf_counter() - started)
        return samples
    finally:
        await envoy.stop()
        await server.stop(0)


# -- 2. fan-out to 50 raw streams ----------------------------------------------

async def run_clients(target: str, count: int) -> None:
    """The client process: ``count`` SotW streams that ACK every response."""

    async def one() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            outbox: asyncio.Queue = asyncio.Queue()

            async def requests():
                while True:
                    yield await outbox.get()

            first = discovery_pb2.DiscoveryRequest(type_url=types.CLUSTER)
            first.node.id, first.node.cluster = NODE, "bench"
            outbox.put_nowait(first)
            outbox.put_nowait(discovery_pb2.DiscoveryRequest(
                type_url=types.ENDPOINT, resource_names=["big"]))
            call = stub.StreamAggregatedResources(requests())
            seen: set[str] = set()
            async for response in call:
                names = [] if response.type_url == types.CLUSTER else ["big"]
                outbox.put_nowait(discovery_pb2.DiscoveryRequest(
                    type_url=response.type_url, resource_names=names,
                    version_info=response.version_info,
                    response_nonce=response.nonce))
                seen.add(response.type_url)
                if seen == {types.CLUSTER, types.ENDPOINT} and not ready.done():
                    counter[0] += 1
                    if counter[0] == count:
                        ready.set_result(None)

    counter = [0]
    ready = asyncio.get_running_loop().create_future()
    tasks = [asyncio.create_task(one()) for _ in range(count)]
    await ready
    print("ready", flush=True)
    await asyncio.gather(*tasks)


async def spawn_clients(target: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.xds_bench", "--clients", target,
        stdout=asyncio.subprocess.PIPE,
        cwd=os.path.join(HERE, ".."),
    )
    async with asyncio.timeout(30):
        line = await process.stdout.readline()
    if line.strip() != b"ready":
        raise RuntimeError("benchmark clients did not start")
    return process


async def fanout(push, target: str) -> tuple[list[float], float]:
    clients = await spawn_clients(target)
    try:
        samples = []
        cpu = time.process_time()
        for i in range(FANOUT_ROUNDS):
            ports = range(20000 + i, 20000 + i + FANOUT_ENDPOINTS)
            started = time.perf_counter()
            await push(cla("big", *ports))
            samples.append(time.perf_counter() - started)
        return samples, (time.process_time() - cpu) / FANOUT_ROUNDS
    finally:
        clients.kill()
        await clients.wait()


async def fanout_monoceros(workdir: str) -> tuple[list[float], float]:
    cache = SnapshotCache()
    cache.set_resources(NODE, clusters=[cluster("big")],
                        endpoints=[cla("big", 1)])
    path = f"{workdir}/mf.sock"
    server = XdsServer(cache, unix_socket=path)
    await server.start()

    async def push(assignment) -> None:
        version = cache.set_endpoints(NODE, assignment)
        if not await cache.wait_acked(NODE, types.ENDPOINT, version, 10):
            raise RuntimeError("not every stream ACKed")

    try:
        return await fanout(push, f"unix:{path}")
    finally:
        await server.stop(0)


async def fanout_floor(workdir: str) -> tuple[list[float], float]:
    floor = FloorAds([cluster("big")], cla("big", 1))
    path = f"{workdir}/ff.sock"
    server = await start_floor(path, floor)
    try:
        return await fanout(floor.push, f"unix:{path}")
    finally:
        await server.stop(0)


# -- report ----------------------------------------------------------------------

def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


async def main() -> int:
    binary = find_envoy()
    workdir = tempfile.mkdtemp(prefix="mxb-")
    try:
        print(f"xDS benchmark: {UPDATES} EDS updates (3 endpoints) to one Envoy; "
              f"{FANOUT_ROUNDS} updates of {FANOUT_ENDPOINTS} endpoints to "
              f"{FANOUT_STREAMS} streams")
        if binary is None:
            print("no Envoy binary found: skipping the Envoy latency part")
        else:
            floor = await latency_floor(binary, workdir)
            ours = await latency_monoceros(binary, workdir)
            print("\npush-to-ACK, one Envoy      monoceros       floor   ratio")
            for label, share in (("p50", 0.5), ("p99", 0.99)):
                m, f = percentile(ours, share), percentile(floor, share)
                print(f"  {label:24} {ms(m)} {ms(f)}   {m / f:5.2f}x")

        floor_times, floor_cpu = await fanout_floor(workdir)
        our_times, our_cpu = await fanout_monoceros(workdir)
        header = f"fan-out to {FANOUT_STREAMS} streams"
        print(f"\n{header:27} monoceros       floor   ratio")
        rows = (
            ("p50 until all ACKed", statistics.median(our_times),
             statistics.median(floor_times)),
            ("max until all ACKed", max(our_times), max(floor_times)),
            ("server CPU per update", our_cpu, floor_cpu),
        )
        for label, m, f in rows:
            print(f"  {label:24} {ms(m)} {ms(f)}   {m / f:5.2f}x")
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", metavar="TARGET", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients:
        asyncio.run(run_clients(args.clients, FANOUT_STREAMS))
    else:
        sys.exit(asyncio.run(main()))
