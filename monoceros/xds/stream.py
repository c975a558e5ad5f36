"""What SotW and delta ADS streams share: per-type state, ACK tracking, the
order in which pending changes go out, and the task structure of a stream.

A stream runs two tasks: a reader that applies each request to the per-type
state as it arrives, and the stream's own task, which sleeps until woken (by
a request or by a new snapshot of its node) and then runs a *round*: it
compares what the client holds with the newest snapshot and writes what is
missing. A type with a response still un-ACKed sends nothing more until the
ACK (or NACK) comes; whatever changed meanwhile goes out as one response of
the newest state. So updates are coalesced, never reordered, and a client is
never more than one response behind per type.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import Message

from monoceros.xds import types
from monoceros.xds.cache import NodeSnapshot, Resource, SnapshotCache, TypeSnapshot
from monoceros.xds.metrics import XdsMetrics
from monoceros.xds.subscription import Subscription

log = logging.getLogger(__name__)


class ProtocolError(Exception):
    """A request the protocol forbids; the stream ends with INVALID_ARGUMENT."""


@dataclass(frozen=True, slots=True)
class Nack:
    message: str
    code: int
    version: str  # the version the client rejected
    at: float  # wall-clock time it was received


@dataclass(slots=True)
class ResourceStatus:
    """One resource as the client last received it, for CSDS."""

    version_info: str
    sent_at: float
    status: str = "SENT"  # SENT, ACKED, NACKED or DOES_NOT_EXIST
    nack: Nack | None = None


@dataclass(slots=True)
class Inflight:
    nonce: str
    version: str
    seq: int | None  # None: ACKing it does not bring the client up to date
    names: tuple[str, ...]
    sent_at: float  # monotonic


@dataclass(slots=True)
class Diff:
    updates: list[Resource] = field(default_factory=list)
    removals: list[str] = field(default_factory=list)


class TypeState:
    """One type's sub-stream: subscription, what was sent, ACK bookkeeping."""

    def __init__(self, type_url: str) -> None:
        self.type_url = type_url
        self.sub = Subscription()
        self.requested = False
        self.must_answer = False  # a first wildcard request gets an answer (R34)
        self.sent: dict[str, Resource] = {}  # what the client is believed to hold
        self.nonce = ""  # the newest nonce sent for this type
        self.inflight: Inflight | None = None
        self.synced_seq = 0
        self.nack_pending = False
        self.version_sent = ""
        self.version_acked = ""
        self.last_nack: Nack | None = None
        self.acks = 0
        self.nacks = 0
        self.resources: dict[str, ResourceStatus] = {}

    def forget(self, names: Iterable[str]) -> None:
        """The client dropped these names: a later interest resends them (R17)."""
        for name in names:
            self.sent.pop(name, None)
            self.resources.pop(name, None)


class Stream:
    """The shared half of an ADS stream; ``variant`` subclasses do the rest."""

    variant = ""

    def __init__(
        self,
        *,
        stream_id: int,
        node: Message,
        cache: SnapshotCache,
        metrics: XdsMetrics,
        control_plane: str = "",
    ) -> None:
        self.stream_id = stream_id
        self.node = node
        self.node_id: str = node.id
        self.cache = cache
        self.metrics = metrics
        self.control_plane = control_plane
        self.connected_at = time.time()
        self.peer = ""
        self.requests = 0  # requests handled, for introspection and tests
        self.states: dict[str, TypeState] = {}
        self._wake = asyncio.Event()
        self._nonce = 0
        self._extra = {"node": self.node_id, "stream_id": stream_id}

    # -- what the cache calls -----------------------------------------------

    def notify(self) -> None:
        self._wake.set()

    def synced(self, type_url: str, seq: int) -> bool:
        state = self.states.get(type_url)
        if state is None or not state.requested:
            return True
        return state.synced_seq >= seq

    # -- the stream's life --------------------------------------------------

    async def run(
        self,
        first: Message,
        requests: AsyncIterator[Message],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Serve until the client goes away; refuse a protocol error loudly."""
        cancel = self.cache.watch(self.node_id, self)
        gauge = self.metrics.streams.labels(variant=self.variant)
        gauge.inc()
        reader = asyncio.create_task(self._read(requests))
        log.info("stream opened", extra={**self._extra, "variant": self.variant})
        try:
            self.handle(first)
            await self._serve(reader, context)
        except ProtocolError as exc:
            log.error("refused request: %s", exc, extra=self._extra)
            self.metrics.refused.inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        finally:
            reader.cancel()
            cancel()
            gauge.dec()
            log.info("stream closed", extra=self._extra)

    async def _serve(
        self, reader: asyncio.Task[None], context: grpc.aio.ServicerContext
    ) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if reader.done():
                reader.result()  # raises the reader's ProtocolError, if any
                return
            await self._round(context)

    async def _read(self, requests: AsyncIterator[Message]) -> None:
        try:
            async for request in requests:
                self.handle(request)
        finally:
            self._wake.set()

    def handle(self, request: Message) -> None:
        """Apply one request; wakes the stream if something may be due."""
        if not request.type_url:
            raise ProtocolError("a discovery request without a type_url")
        if request.HasField("node") and request.node.id != self.node_id:
            raise ProtocolError(
                f"node {request.node.id!r} on a stream opened by {self.node_id!r}"
            )
        self.requests += 1
        if self.apply(request):
            self._wake.set()

    def apply(self, request: Message) -> bool:
        raise NotImplementedError

    # -- rounds -------------------------------------------------------------

    async def _round(self, context: grpc.aio.ServicerContext) -> None:
        """Send what is due, in make-before-break order (R29).

        Updates go out cluster, endpoint, listener, route; removals only once
        no type has an update waiting, so nothing is removed while something
        that replaces it is still on its way.
        """
        snapshot = self.cache.snapshot(self.node_id)
        if snapshot is None:
            return

        order = [
            t for t in types.ORDER if t in self.states and self.states[t].requested
        ]
        waiting = {t for t in order if self.diff(self.states[t], snapshot).updates}
        for type_url in order:
            state = self.states[type_url]
            if state.inflight is not None:
                continue
            diff = self.diff(state, snapshot)
            final = not (waiting - {type_url})
            if diff.updates or state.must_answer or (diff.removals and final):
                await self._send(context, state, snapshot, diff, final)
            waiting.discard(type_url)

        for type_url in order:
            state = self.states[type_url]
            if waiting or state.inflight is not None:
                continue
            diff = self.diff(state, snapshot)
            if diff.removals:
                await self._send(context, state, snapshot, diff, True)

        self._settle(order, snapshot)

    async def _send(
        self,
        context: grpc.aio.ServicerContext,
        state: TypeState,
        snapshot: NodeSnapshot,
        diff: Diff,
        final: bool,
    ) -> None:
        typed = snapshot.of(state.type_url) or TypeSnapshot(
            self.cache.version(self.node_id, state.type_url), 0
        )
        self._nonce += 1
        nonce = str(self._nonce)
        response, names, complete = self.build(state, typed, diff, final, nonce)

        # The state changes before the write: the ACK may be read while the
        # write is still being awaited.
        state.must_answer = False
        state.nonce = nonce
        state.version_sent = response_version(typed, complete)
        state.inflight = Inflight(
            nonce=nonce,
            version=state.version_sent,
            seq=typed.seq if complete else None,
            names=names,
            sent_at=time.monotonic(),
        )
        now = time.time()
        for name in names:
            state.resources[name] = ResourceStatus(state.version_sent, now)
        if diff.updates and state.type_url == types.CLUSTER:
            self._rewarm(diff.updates)

        self.metrics.responses.labels(
            type=types.short_name(state.type_url), variant=self.variant
        ).inc()
        log.debug(
            "sending response",
            extra={
                **self._extra,
                "type": types.short_name(state.type_url),
                "version": state.version_sent,
                "nonce": nonce,
                "resources": len(names),
            },
        )
        await context.write(response)

    def _rewarm(self, clusters: list[Resource]) -> None:
        """A cluster added or changed warms until its CLA arrives, and Envoy
        does not ask again for a name it already watches (R27, envoy#13009):
        so forget having sent those CLAs, and the round sends them again."""
        endpoints = self.states.get(types.ENDPOINT)
        if endpoints is not None:
            endpoints.forget(
                [c.name for c in clusters if c.name in endpoints.sent]
            )

    def _settle(self, order: list[str], snapshot: NodeSnapshot) -> None:
        """Mark the types with nothing left to send as holding the newest."""
        moved = False
        for type_url in order:
            state = self.states[type_url]
            if state.inflight or state.nack_pending or state.must_answer:
                continue
            diff = self.diff(state, snapshot)
            typed = snapshot.of(type_url)
            seq = typed.seq if typed else 0
            if not diff.updates and not diff.removals and seq > state.synced_seq:
                state.synced_seq = seq
                moved = True
        if moved:
            self.cache.acks_changed(self.node_id)

    # -- ACK and NACK -------------------------------------------------------

    def acknowledge(self, state: TypeState, request: Message) -> None:
        """Match an ACK or NACK to the response in flight (R5, R6)."""
        inflight = state.inflight
        assert inflight is not None
        state.inflight = None
        short = types.short_name(state.type_url)
        self.metrics.push_ack_seconds.labels(type=short).observe(
            time.monotonic() - inflight.sent_at
        )

        if request.HasField("error_detail"):
            self._rejected(state, inflight, request.error_detail)
        else:
            state.nack_pending = False
            state.version_acked = inflight.version
            state.acks += 1
            if inflight.seq is not None and inflight.seq > state.synced_seq:
                state.synced_seq = inflight.seq
            for name in inflight.names:
                status = state.resources.get(name)
                if status is not None and status.status == "SENT":
                    status.status = "ACKED"
                    status.nack = None
            self.metrics.acks.labels(type=short).inc()
        self.cache.acks_changed(self.node_id)

    def _rejected(self, state: TypeState, inflight: Inflight, error: Message) -> None:
        # Hold on: the client keeps its last good config (R8), and sending
        # the rejected version again would only be rejected again (R9).
        nack = Nack(error.message, error.code, inflight.version, time.time())
        state.nack_pending = True
        state.last_nack = nack
        state.nacks += 1
        for name in inflight.names:
            status = state.resources.get(name)
            if status is not None:
                status.status = "NACKED"
                status.nack = nack
        self.metrics.nacks.labels(type=types.short_name(state.type_url)).inc()
        log.warning(
            "client rejected a response: %s",
            error.message,
            extra={
                **self._extra,
                "type": types.short_name(state.type_url),
                "version": inflight.version,
                "nonce": inflight.nonce,
            },
        )

    # -- for subclasses -----------------------------------------------------

    def rejection(self, type_url: str) -> str | None:
        state = self.states.get(type_url)
        if state is None or not state.nack_pending or state.last_nack is None:
            return None
        return state.last_nack.message

    def state_for(self, type_url: str) -> tuple[TypeState, bool]:
        """The state of a type, and whether this is its first request."""
        state = self.states.get(type_url)
        if state is None:
            state = self.states[type_url] = TypeState(type_url)
            if type_url not in types.ORDER:
                log.warning(
                    "request for a type this server does not serve",
                    extra={**self._extra, "type": type_url},
                )
        first = not state.requested
        state.requested = True
        return state, first

    def diff(self, state: TypeState, snapshot: NodeSnapshot) -> Diff:
        raise NotImplementedError

    def build(
        self,
        state: TypeState,
        typed: TypeSnapshot,
        diff: Diff,
        final: bool,
        nonce: str,
    ) -> tuple[Message, tuple[str, ...], bool]:
        """The response, the names it carries, and whether ACKing it brings
        the client up to date with ``typed``."""
        raise NotImplementedError


def response_version(typed: TypeSnapshot, complete: bool) -> str:
    # A response that keeps resources due for removal (make-before-break)
    # gets its own version, so its ACK never passes for the final one.
    return typed.version if complete else typed.version + ".pending"


def updates_for(state: TypeState, typed: TypeSnapshot | None) -> list[Resource]:
    """Resources the client is interested in and does not hold as they are."""
    if typed is None:
        return []
    updates = []
    sub = state.sub
    sent = state.sent
    for name, resource in typed.resources.items():
        if not sub.interested(name):
            continue
        held = sent.get(name)
        if held is None or held.version != resource.version:
            updates.append(resource)
    return updates
