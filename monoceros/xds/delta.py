"""Incremental ADS streams (``DeltaAggregatedResources``)."""

from __future__ import annotations

import logging

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from monoceros.xds.cache import NodeSnapshot, Resource, TypeSnapshot
from monoceros.xds.stream import (
    Diff,
    ResourceStatus,
    Stream,
    TypeState,
    response_version,
    updates_for,
)

log = logging.getLogger(__name__)

# Sent to say "does not exist" for a subscribed name (R26), so that it is
# said once and not again until the resource appears.
ABSENT = Resource(name="", version="", body=any_pb2.Any())


def _claimed(name: str, version: str) -> Resource:
    """A resource the client says it holds from an earlier stream (R33)."""
    return Resource(name=name, version=version, body=any_pb2.Any())


class DeltaStream(Stream):
    variant = "delta"

    def apply(self, request: Message) -> bool:
        state, first = self.state_for(request.type_url)
        nonce = request.response_nonce

        # The nonce only matches an ACK or NACK to its response; the
        # subscription changes of any request count, stale or not (R12).
        if nonce and state.inflight is not None and nonce == state.inflight.nonce:
            self.acknowledge(state, request)

        added, dropped = state.sub.change_delta(
            request.resource_names_subscribe,
            request.resource_names_unsubscribe,
            first,
        )
        # Names subscribed are always answered, even if the client seems to
        # hold them (R32); names dropped are resent if the wildcard still
        # covers them (R32's exception).
        state.forget(added | dropped)
        if not state.sub.wildcard:
            # The wildcard may just have been dropped: what it covered is no
            # longer the client's concern, not even its removal.
            state.forget([n for n in state.sent if n not in state.sub.names])
        if first:
            for name, version in request.initial_resource_versions.items():
                if state.sub.interested(name) and name not in added:
                    state.sent[name] = _claimed(name, version)
            if state.sub.wildcard:
                state.must_answer = True  # R34
        return True

    def diff(self, state: TypeState, snapshot: NodeSnapshot) -> Diff:
        typed = snapshot.of(state.type_url)
        present = typed.resources if typed else {}
        removals = [
            name
            for name, held in state.sent.items()
            if held is not ABSENT and name not in present
        ]
        # Named but never existing: say so rather than let the client wait
        # for its initial_fetch_timeout (R26).
        removals.extend(
            name
            for name in state.sub.names
            if name not in present and name not in state.sent
        )
        return Diff(updates=updates_for(state, typed), removals=removals)

    def build(
        self,
        state: TypeState,
        typed: TypeSnapshot,
        diff: Diff,
        final: bool,
        nonce: str,
    ) -> tuple[Message, tuple[str, ...], bool]:
        response = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=response_version(typed, final or not diff.removals),
            type_url=state.type_url,
            nonce=nonce,
        )
        if self.control_plane:
            response.control_plane.identifier = self.control_plane

        for resource in diff.updates:
            response.resources.add(
                name=resource.name, version=resource.version, resource=resource.body
            )
            state.sent[resource.name] = resource
        if final:
            response.removed_resources.extend(diff.removals)
            self._removed(state, diff.removals)
        names = tuple(r.name for r in diff.updates)
        return response, names, final or not diff.removals

    def _removed(self, state: TypeState, names: list[str]) -> None:
        for name in names:
            state.resources.pop(name, None)
            if name in state.sub.names:
                state.sent[name] = ABSENT
                state.resources[name] = ResourceStatus(
                    "", 0.0, status="DOES_NOT_EXIST"
                )
            else:
                state.sent.pop(name, None)
