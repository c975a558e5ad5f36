"""The Aggregated Discovery Service: opens SotW and delta streams."""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf.message import DecodeError, Message

from monoceros import __version__
from monoceros.xds.cache import SnapshotCache
from monoceros.xds.delta import DeltaStream
from monoceros.xds.metrics import XdsMetrics
from monoceros.xds.sotw import SotwStream
from monoceros.xds.stream import ProtocolError, Stream

log = logging.getLogger(__name__)


class AdsService(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Both ADS variants, and the registry of open streams for introspection."""

    def __init__(self, cache: SnapshotCache, metrics: XdsMetrics) -> None:
        self.cache = cache
        self.metrics = metrics
        self.streams: dict[int, Stream] = {}
        self._ids = itertools.count(1)
        self._control_plane = f"monoceros/{__version__} boot {cache.boot_id}"

    async def StreamAggregatedResources(  # noqa: N802 (gRPC's method name)
        self,
        request_iterator: AsyncIterator[Message],
        context: grpc.aio.ServicerContext,
    ) -> None:
        await self._serve(SotwStream, request_iterator, context)

    async def DeltaAggregatedResources(  # noqa: N802
        self,
        request_iterator: AsyncIterator[Message],
        context: grpc.aio.ServicerContext,
    ) -> None:
        await self._serve(DeltaStream, request_iterator, context)

    async def _serve(
        self,
        kind: type[Stream],
        requests: AsyncIterator[Message],
        context: grpc.aio.ServicerContext,
    ) -> None:
        stream_id = next(self._ids)
        requests = _parsed(requests)
        try:
            first = await anext(requests, None)
        except ProtocolError as exc:
            log.error("refused a stream: %s", exc,
                      extra={"stream_id": stream_id, "peer": context.peer()})
            self.metrics.refused.inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if first is None:
            return  # closed before asking anything

        # The node only has to be on the first request (R2); without it the
        # stream would be served the config of node "" by mistake.
        if not first.node.id:
            log.error(
                "refused a stream whose first request names no node",
                extra={"stream_id": stream_id, "peer": context.peer(),
                       "variant": kind.variant},
            )
            self.metrics.refused.inc()
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first discovery request of a stream must carry node.id",
            )

        stream = kind(
            stream_id=stream_id,
            node=first.node,
            cache=self.cache,
            metrics=self.metrics,
            control_plane=self._control_plane,
        )
        stream.peer = context.peer()
        self.streams[stream_id] = stream
        try:
            await stream.run(first, requests, context)
        finally:
            del self.streams[stream_id]


async def _parsed(requests: AsyncIterator[Message]) -> AsyncIterator[Message]:
    """The stream's requests; bytes that do not parse end it as a refusal
    (INVALID_ARGUMENT, one log line) rather than grpc's UNKNOWN status and
    a traceback in the log."""
    try:
        async for request in requests:
            yield request
    except DecodeError as exc:
        raise ProtocolError(f"a request that does not parse: {exc}") from None
