"""The names Monoceros and its Envoys agree on: one place, one contract.

The xDS server serves resources per node id, Envoy subscribes to them by
name, and the supervisor asks Envoy's admin API about them by name again, so
every name is derived here from the pool's name and nowhere else.
"""

from __future__ import annotations

NODE_CLUSTER = "monoceros"
ADS_CLUSTER = "monoceros_xds"

# Requests that carry this header stick to one worker under RING_HASH and
# MAGLEV; requests without it hash on the client's address instead.
HASH_HEADER = "x-session-key"

# Endpoint metadata namespace that carries the worker id in EDS.
# Node metadata key naming the Monoceros process an Envoy belongs to.
INSTANCE_KEY = "monoceros_instance"
METADATA_NAMESPACE = "monoceros"

_NODE_PREFIX = "monoceros-"


def node_id(pool: str) -> str:
    return _NODE_PREFIX + pool


def pool_of_node(node: str) -> str:
    """The pool name a node id was made from; ``ValueError`` for any other id."""
    if not node.startswith(_NODE_PREFIX) or node == _NODE_PREFIX:
        raise ValueError(f"node id {node!r} was not made by Monoceros")
    return node[len(_NODE_PREFIX) :]


def cluster_name(pool: str) -> str:
    """Name of the pool's Cluster and of its ClusterLoadAssignment."""
    return pool


def route_name(pool: str) -> str:
    return pool


def listener_name(pool: str) -> str:
    return pool + "-listener"


def bootstrap_filename(pool: str) -> str:
    return pool + "-bootstrap.json"
