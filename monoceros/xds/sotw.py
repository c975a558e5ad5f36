"""State-of-the-world ADS streams (``StreamAggregatedResources``)."""

from __future__ import annotations

import logging

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message

from monoceros.xds import types
from monoceros.xds.cache import NodeSnapshot, Resource, TypeSnapshot
from monoceros.xds.stream import Diff, Stream, TypeState, updates_for

log = logging.getLogger(__name__)


class SotwStream(Stream):
    variant = "sotw"

    def apply(self, request: Message) -> bool:
        state, first = self.state_for(request.type_url)
        nonce = request.response_nonce

        # A stale nonce: a newer response is on its way, and the client will
        # answer that one. Keep the subscription change (envoy#10363) but do
        # not answer this request, nor take it for an ACK (R11).
        stale = bool(nonce) and nonce != state.nonce
        acking = (
            not stale
            and state.inflight is not None
            and nonce == state.inflight.nonce
        )
        if acking:
            self.acknowledge(state, request)

        added, dropped = state.sub.set_sotw(request.resource_names)
        # Names asked for anew are sent even if they were sent before,
        # unasked (R17, R22). A partial type's dropped names are simply no
        # longer held; a full-state type answers with what is left (R16).
        state.forget(added)
        if request.type_url not in types.FULL_STATE:
            state.forget(dropped)
        if first and state.sub.wildcard:
            state.must_answer = True  # even an empty answer ends Envoy's wait

        if stale:
            log.debug(
                "stale nonce, not answered",
                extra={**self._extra, "type": types.short_name(request.type_url),
                       "nonce": nonce, "newest": state.nonce},
            )
            return False
        return True

    def diff(self, state: TypeState, snapshot: NodeSnapshot) -> Diff:
        typed = snapshot.of(state.type_url)
        updates = updates_for(state, typed)
        if state.type_url not in types.FULL_STATE:
            # Partial types: a CLA or route missing from a response is not a
            # deletion (R20); its parent's removal drops it on the client.
            return Diff(updates=updates)

        present = typed.resources if typed else {}
        sub = state.sub
        removals = [
            name
            for name in state.sent
            if name not in present or not sub.interested(name)
        ]
        return Diff(updates=updates, removals=removals)

    def build(
        self,
        state: TypeState,
        typed: TypeSnapshot,
        diff: Diff,
        final: bool,
        nonce: str,
    ) -> tuple[Message, tuple[str, ...], bool]:
        if state.type_url in types.FULL_STATE:
            carried, complete = self._full_state(state, typed, diff, final)
        else:
            carried, complete = diff.updates, True
            for resource in carried:
                state.sent[resource.name] = resource

        response = discovery_pb2.DiscoveryResponse(
            version_info=typed.version if complete else typed.version + ".pending",
            type_url=state.type_url,
            nonce=nonce,
        )
        response.resources.extend(r.body for r in carried)
        if self.control_plane:
            response.control_plane.identifier = self.control_plane
        return response, tuple(r.name for r in carried), complete

    def _full_state(
        self, state: TypeState, typed: TypeSnapshot, diff: Diff, final: bool
    ) -> tuple[list[Resource], bool]:
        """Every subscribed resource (R19); while other types still have
        updates to send, resources due for removal stay in (R29)."""
        carried = [
            r for name, r in typed.resources.items() if state.sub.interested(name)
        ]
        complete = final or not diff.removals
        if not complete:
            carried.extend(state.sent[name] for name in diff.removals)
        state.sent = {r.name: r for r in carried}
        for name in list(state.resources):
            if name not in state.sent:
                del state.resources[name]
        return carried, complete
