"""Immutable, versioned snapshots of xDS resources per Envoy node id.

The supervisor writes here (``set_resources``, ``set_endpoints``) and awaits
``wait_acked``; ADS streams read the newest snapshot of their node whenever
they are woken. A write never blocks and never waits for a stream: it swaps
in a new snapshot and wakes the node's streams, which coalesce every write
made while they were busy into one response of the newest state.

Versions: each resource carries a content hash (its delta version), and each
type of each node carries ``<boot id>-<sequence>``. The boot id is random per
cache, so a version never repeats across restarts (XDS_PROTOCOL R36): an Envoy
that reconnects with a version from an earlier process is simply unknown.
The sequence is one counter for the whole cache, so "newer" is well defined.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from google.protobuf import any_pb2
from google.protobuf.message import Message

from monoceros.xds import types

log = logging.getLogger(__name__)

_EMPTY: Mapping[str, Resource] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Resource:
    """One resource, serialised once; ``body`` must never be mutated."""

    name: str
    version: str  # a hash of the serialised message
    body: any_pb2.Any


@dataclass(frozen=True, slots=True)
class TypeSnapshot:
    version: str
    seq: int
    resources: Mapping[str, Resource] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    types: Mapping[str, TypeSnapshot]

    def of(self, type_url: str) -> TypeSnapshot | None:
        return self.types.get(type_url)


class StreamHandle(Protocol):
    """What the cache needs of an open stream. Called on the loop only."""

    def notify(self) -> None:
        """The node's snapshot changed: look at it again soon. Must not block."""

    def synced(self, type_url: str, seq: int) -> bool:
        """Whether the client holds (has ACKed) ``seq`` or newer of a type,
        or has nothing to receive for it."""

    def rejection(self, type_url: str) -> str | None:
        """The error of the client's last NACK of the type, if its newest
        answer for the type was a NACK."""


@dataclass(slots=True)
class _Waiter:
    type_url: str
    seq: int
    done: asyncio.Event = field(default_factory=asyncio.Event)


def make_resource(message: Message) -> Resource:
    name = types.resource_name(message)
    if not name:
        raise ValueError(f"a {message.DESCRIPTOR.name} without a name")

    data = message.SerializeToString(deterministic=True)
    digest = hashlib.blake2b(data, digest_size=8).hexdigest()
    body = any_pb2.Any(type_url=types.type_url_of(message), value=data)
    return Resource(name=name, version=digest, body=body)


class SnapshotCache:
    """Snapshots per node id. Every method is for the event loop's thread."""

    def __init__(self) -> None:
        self.boot_id = secrets.token_hex(4)
        self._seq = 0
        self._snapshots: dict[str, NodeSnapshot] = {}
        self._streams: dict[str, set[StreamHandle]] = {}
        self._waiters: dict[str, list[_Waiter]] = {}

    # -- writing -------------------------------------------------------------

    def set_resources(
        self,
        node_id: str,
        *,
        clusters: Iterable[Message] | None = None,
        listeners: Iterable[Message] | None = None,
        routes: Iterable[Message] | None = None,
        endpoints: Iterable[Message] | None = None,
    ) -> None:
        """Replace whole types for a node; ``None`` leaves a type as it is.

        Each resource is named by its own name field (``cluster_name`` for a
        ClusterLoadAssignment). A type whose content did not change keeps its
        version, so its streams send nothing. Raises ``ValueError`` for a
        duplicate or empty name and ``TypeError`` for a message of the wrong
        type, before anything is changed.
        """
        given = {
            types.CLUSTER: clusters,
            types.ENDPOINT: endpoints,
            types.LISTENER: listeners,
            types.ROUTE: routes,
        }
        built: dict[str, dict[str, Resource]] = {}
        for type_url, messages in given.items():
            if messages is not None:
                built[type_url] = _build(type_url, messages)

        snapshot = self._snapshots.get(node_id)
        current = dict(snapshot.types) if snapshot else {}
        changed = snapshot is None
        for type_url, resources in built.items():
            old = current.get(type_url)
            if old is not None and _same(old.resources, resources):
                continue
            current[type_url] = self._next(resources)
            changed = True

        if changed:
            self._publish(node_id, current)

    def set_endpoints(self, node_id: str, cla: Message) -> str:
        """Replace (or add) one ClusterLoadAssignment; return the EDS version."""
        if types.type_url_of(cla) != types.ENDPOINT:
            raise TypeError(f"set_endpoints takes a ClusterLoadAssignment, "
                            f"not a {cla.DESCRIPTOR.name}")

        resource = make_resource(cla)
        snapshot = self._snapshots.get(node_id)
        current = dict(snapshot.types) if snapshot else {}
        old = current.get(types.ENDPOINT)
        old_resources = old.resources if old else _EMPTY
        kept = old_resources.get(resource.name)
        if old is not None and kept is not None and kept.version == resource.version:
            return old.version

        resources = dict(old_resources)
        resources[resource.name] = resource
        current[types.ENDPOINT] = self._next(resources)
        self._publish(node_id, current)
        return current[types.ENDPOINT].version

    def remove_node(self, node_id: str) -> None:
        """Forget a node's resources.

        Streams still open for it keep their Envoy on its last config: they
        send nothing more until resources are set for the node again.
        """
        if self._snapshots.pop(node_id, None) is not None:
            self._wake_streams(node_id)

    # -- reading -------------------------------------------------------------

    def snapshot(self, node_id: str) -> NodeSnapshot | None:
        return self._snapshots.get(node_id)

    def version(self, node_id: str, type_url: str) -> str:
        """The current version of a type for a node (of an empty set if unset)."""
        snapshot = self._snapshots.get(node_id)
        typed = snapshot.of(type_url) if snapshot else None
        return typed.version if typed else self._empty_version()

    def nodes(self) -> dict[str, dict[str, str]]:
        """For introspection: node id -> type URL -> current version."""
        return {
            node: {url: typed.version for url, typed in snap.types.items()}
            for node, snap in self._snapshots.items()
        }

    def stream_count(self, node_id: str) -> int:
        return len(self._streams.get(node_id, ()))

    def seq_of(self, version: str) -> int | None:
        """The sequence of a version this cache issued, else ``None``."""
        boot, _, seq = version.rpartition("-")
        if boot != self.boot_id or not seq.isdigit():
            return None
        return int(seq)

    # -- acknowledgements ----------------------------------------------------

    async def wait_acked(
        self, node_id: str, type_url: str, version: str, timeout: float
    ) -> bool:
        """Wait until every stream open for the node holds ``version`` or newer.

        True at once if no stream is open, or no open stream has anything to
        receive for the type; False once ``timeout`` seconds pass. A NACK does
        not count: the wait goes on until a newer version is ACKed or the
        timeout ends it. The supervisor awaits this before it signals a
        drained worker.
        """
        seq = self.seq_of(version)
        if seq is None:
            raise ValueError(f"version {version!r} was not issued by this cache")
        if self._all_synced(node_id, type_url, seq):
            return True

        waiter = _Waiter(type_url, seq)
        self._waiters.setdefault(node_id, []).append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter.done.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self._drop_waiter(node_id, waiter)

    def acks_changed(self, node_id: str) -> None:
        """Streams call this when what their client holds may have moved on."""
        for waiter in self._waiters.get(node_id, ()):
            if not waiter.done.is_set() and self._all_synced(
                node_id, waiter.type_url, waiter.seq
            ):
                waiter.done.set()

    # -- streams -------------------------------------------------------------

    def watch(self, node_id: str, stream: StreamHandle) -> Callable[[], None]:
        """Register an open stream; returns an idempotent cancel."""
        self._streams.setdefault(node_id, set()).add(stream)

        def cancel() -> None:
            streams = self._streams.get(node_id)
            if streams is None or stream not in streams:
                return
            streams.discard(stream)
            if not streams:
                del self._streams[node_id]
            self.acks_changed(node_id)

        return cancel

    def rejections(self, node_id: str, type_url: str) -> list[str]:
        """Errors of open streams whose newest answer for a type is a NACK."""
        errors = []
        for stream in self._streams.get(node_id, ()):
            error = stream.rejection(type_url)
            if error is not None:
                errors.append(error)
        return errors

    def watch_count(self) -> int:
        return sum(len(s) for s in self._streams.values())

    # -- internals -----------------------------------------------------------

    def _next(self, resources: dict[str, Resource]) -> TypeSnapshot:
        self._seq += 1
        return TypeSnapshot(
            version=f"{self.boot_id}-{self._seq}",
            seq=self._seq,
            resources=MappingProxyType(resources),
        )

    def _empty_version(self) -> str:
        return f"{self.boot_id}-0"

    def _publish(self, node_id: str, current: dict[str, TypeSnapshot]) -> None:
        self._snapshots[node_id] = NodeSnapshot(MappingProxyType(current))
        self._wake_streams(node_id)

    def _wake_streams(self, node_id: str) -> None:
        for stream in self._streams.get(node_id, ()):
            stream.notify()

    def _all_synced(self, node_id: str, type_url: str, seq: int) -> bool:
        streams = self._streams.get(node_id, ())
        return all(stream.synced(type_url, seq) for stream in streams)

    def _drop_waiter(self, node_id: str, waiter: _Waiter) -> None:
        waiters = self._waiters.get(node_id)
        if waiters is None:
            return
        waiters.remove(waiter)
        if not waiters:
            del self._waiters[node_id]


def _build(type_url: str, messages: Iterable[Message]) -> dict[str, Resource]:
    resources: dict[str, Resource] = {}
    for message in messages:
        if types.type_url_of(message) != type_url:
            raise TypeError(
                f"a {message.DESCRIPTOR.full_name} given as "
                f"{types.short_name(type_url).upper()} resource"
            )
        resource = make_resource(message)
        if resource.name in resources:
            # A response naming a resource twice is NACKed (R21).
            raise ValueError(
                f"two {types.short_name(type_url).upper()} resources "
                f"named {resource.name!r}"
            )
        resources[resource.name] = resource
    return resources


def _same(old: Mapping[str, Resource], new: Mapping[str, Resource]) -> bool:
    if old.keys() != new.keys():
        return False
    return all(old[name].version == r.version for name, r in new.items())
