"""The four resource types served over ADS, their order and their rules."""

from __future__ import annotations

from google.protobuf.message import Message

_PREFIX = "type.googleapis.com/envoy.config."

CLUSTER = _PREFIX + "cluster.v3.Cluster"
ENDPOINT = _PREFIX + "endpoint.v3.ClusterLoadAssignment"
LISTENER = _PREFIX + "listener.v3.Listener"
ROUTE = _PREFIX + "route.v3.RouteConfiguration"

# Make-before-break order (XDS_PROTOCOL R29): clusters, their endpoints,
# listeners, their routes. Removals go out after all of these settle.
ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE)

# SotW responses for these types carry every subscribed resource, and a
# resource left out is deleted (R19); the others may carry only changes (R20).
FULL_STATE: frozenset[str] = frozenset({CLUSTER, LISTENER})

SHORT_NAMES: dict[str, str] = {
    CLUSTER: "cds",
    ENDPOINT: "eds",
    LISTENER: "lds",
    ROUTE: "rds",
}


def short_name(type_url: str) -> str:
    """A label for logs and metrics; unknown types keep their full URL."""
    return SHORT_NAMES.get(type_url, type_url)


def type_url_of(message: Message) -> str:
    return "type.googleapis.com/" + message.DESCRIPTOR.full_name


def resource_name(message: Message) -> str:
    """The name a resource is known by: ``cluster_name`` for a CLA."""
    if message.DESCRIPTOR.full_name == "envoy.config.endpoint.v3.ClusterLoadAssignment":
        return message.cluster_name
    return message.name
