"""The Client Status Discovery Service: what each connected node was sent.

One ``ClientConfig`` per open ADS stream (a node normally has one), with a
``generic_xds_configs`` entry per resource: the version that last carried
it, whether the client ACKed or NACKed that, and the NACK's error as given.
Names a client subscribed to that the server does not have are listed as
REQUESTED and NOT_SENT, which is what a stuck warming cluster looks like.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterable

import grpc
from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from monoceros.xds.ads import AdsService
from monoceros.xds.stream import ResourceStatus, Stream, TypeState

log = logging.getLogger(__name__)

_STATUS = {
    # our status: (config_status, client_status)
    "SENT": (csds_pb2.STALE, dump_pb2.REQUESTED),
    "ACKED": (csds_pb2.SYNCED, dump_pb2.ACKED),
    "NACKED": (csds_pb2.ERROR, dump_pb2.NACKED),
    "DOES_NOT_EXIST": (csds_pb2.NOT_SENT, dump_pb2.DOES_NOT_EXIST),
}


class CsdsService(csds_pb2_grpc.ClientStatusDiscoveryServiceServicer):
    def __init__(self, ads: AdsService) -> None:
        self.ads = ads

    async def FetchClientStatus(  # noqa: N802 (gRPC's method name)
        self, request: Message, context: grpc.aio.ServicerContext
    ) -> Message:
        return await self._answer(request, context)

    async def StreamClientStatus(  # noqa: N802
        self,
        request_iterator: AsyncIterator[Message],
        context: grpc.aio.ServicerContext,
    ) -> None:
        async for request in request_iterator:
            await context.write(await self._answer(request, context))

    async def _answer(
        self, request: Message, context: grpc.aio.ServicerContext
    ) -> Message:
        try:
            matchers = [_node_matcher(m) for m in request.node_matchers]
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        response = csds_pb2.ClientStatusResponse()
        for stream in list(self.ads.streams.values()):
            if all(match(stream.node_id) for match in matchers):
                response.config.append(
                    client_config(stream, not request.exclude_resource_contents)
                )
        return response


def client_config(stream: Stream, contents: bool = True) -> Message:
    config = csds_pb2.ClientConfig()
    config.node.CopyFrom(stream.node)
    for type_url, state in stream.states.items():
        config.generic_xds_configs.extend(_resources(type_url, state, contents))
    return config


def _resources(
    type_url: str, state: TypeState, contents: bool
) -> Iterable[Message]:
    for name, status in sorted(state.resources.items()):
        entry = _entry(type_url, name, status)
        held = state.sent.get(name)
        if contents and held is not None and held.body.type_url:
            entry.xds_config.CopyFrom(held.body)
        yield entry

    for name in sorted(state.sub.names - state.resources.keys()):
        yield csds_pb2.ClientConfig.GenericXdsConfig(
            type_url=type_url,
            name=name,
            config_status=csds_pb2.NOT_SENT,
            client_status=dump_pb2.REQUESTED,
        )


def _entry(type_url: str, name: str, status: ResourceStatus) -> Message:
    config_status, client_status = _STATUS[status.status]
    entry = csds_pb2.ClientConfig.GenericXdsConfig(
        type_url=type_url,
        name=name,
        version_info=status.version_info,
        config_status=config_status,
        client_status=client_status,
    )
    if status.sent_at:
        entry.last_updated.CopyFrom(timestamp(status.sent_at))
    if status.nack is not None:
        entry.error_state.details = status.nack.message
        entry.error_state.version_info = status.nack.version
        entry.error_state.last_update_attempt.CopyFrom(timestamp(status.nack.at))
    return entry


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _node_matcher(matcher: Message):
    if len(matcher.node_metadatas):
        raise ValueError("node_matchers: matching on node_metadatas is not supported")
    if not matcher.HasField("node_id"):
        return lambda node_id: True
    return string_matcher(matcher.node_id)


def string_matcher(spec: Message):
    """A predicate for an ``envoy.type.matcher.v3.StringMatcher``."""
    fold = spec.ignore_case
    kind = spec.WhichOneof("match_pattern")
    if kind == "safe_regex":
        try:
            pattern = re.compile(spec.safe_regex.regex)
        except re.error as exc:
            raise ValueError(f"node_matchers: invalid regex: {exc}") from exc
        return lambda s: pattern.fullmatch(s) is not None

    wanted = getattr(spec, kind) if kind else ""
    if fold:
        wanted = wanted.lower()
    tests = {
        "exact": lambda s: s == wanted,
        "prefix": lambda s: s.startswith(wanted),
        "suffix": lambda s: s.endswith(wanted),
        "contains": lambda s: wanted in s,
    }
    if kind not in tests:
        raise ValueError(f"node_matchers: unsupported string matcher {kind!r}")
    test = tests[kind]
    return lambda s: test(s.lower() if fold else s)
