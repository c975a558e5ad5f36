"""``monoceros.xds.v1.XdsIntrospection``: per stream, per type ACK state.

CSDS has a field for each resource but none for a stream's versions sent
and ACKed, or when it opened; this small service carries those for
``monoceros xds status``. Its gRPC glue is a few lines written here rather
than generated, so it pins no grpcio version (see proto/README.md).
"""

from __future__ import annotations

import grpc
from google.protobuf.message import Message

from monoceros.xds.ads import AdsService
from monoceros.xds.csds import timestamp
from monoceros.xds.stream import Stream
from monoceros.xds.v1 import introspection_pb2 as pb

SERVICE = "monoceros.xds.v1.XdsIntrospection"
LIST_STREAMS = f"/{SERVICE}/ListStreams"


class IntrospectionService:
    def __init__(self, ads: AdsService) -> None:
        self.ads = ads

    async def list_streams(
        self, request: Message, context: grpc.aio.ServicerContext
    ) -> Message:
        response = pb.ListStreamsResponse(boot_id=self.ads.cache.boot_id)
        for stream in list(self.ads.streams.values()):
            if not request.node_id or request.node_id == stream.node_id:
                response.streams.append(self._status(stream))
        return response

    def _status(self, stream: Stream) -> Message:
        status = pb.StreamStatus(
            stream_id=stream.stream_id,
            node_id=stream.node_id,
            node_cluster=stream.node.cluster,
            variant=stream.variant,
            peer=stream.peer,
        )
        status.connected_since.CopyFrom(timestamp(stream.connected_at))
        for type_url, state in stream.states.items():
            typed = status.types.add(
                type_url=type_url,
                version_sent=state.version_sent,
                version_acked=state.version_acked,
                version_current=self.ads.cache.version(stream.node_id, type_url),
                waiting_for_ack=state.inflight is not None,
                acks=state.acks,
                nacks=state.nacks,
                wildcard=state.sub.wildcard,
                subscribed=sorted(state.sub.names),
            )
            nack = state.last_nack
            if nack is not None:
                typed.last_nack.message = nack.message
                typed.last_nack.code = nack.code
                typed.last_nack.version = nack.version
                typed.last_nack.at.CopyFrom(timestamp(nack.at))
        return status

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.unary_unary_rpc_method_handler(
            self.list_streams,
            request_deserializer=pb.ListStreamsRequest.FromString,
            response_serializer=pb.ListStreamsResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(
            SERVICE, {"ListStreams": method}
        )


def list_streams_stub(channel: grpc.aio.Channel):
    """A callable for the client side: ``await stub(request, timeout=...)``."""
    return channel.unary_unary(
        LIST_STREAMS,
        request_serializer=pb.ListStreamsRequest.SerializeToString,
        response_deserializer=pb.ListStreamsResponse.FromString,
    )
