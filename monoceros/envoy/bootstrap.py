"""The bootstrap of a pool's Envoy: who it is and where its xDS server is.

Everything else (listener, route, cluster, endpoints) arrives over ADS, so
the file never changes while Monoceros runs and Envoy is never re-read.
"""

from __future__ import annotations

import os
import tempfile

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    grpc_service_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import json_format, struct_pb2

from monoceros.config import PoolConfig
from monoceros.envoy import names
from monoceros.envoy.resources import (
    HTTP_PROTOCOL_OPTIONS,
    ads_source,
    socket_address,
    upstream_http2,
)
from monoceros.errors import ConfigError

# A Unix socket path must fit sun_path (108 bytes with its NUL terminator).
MAX_SOCKET_PATH = 107

# Envoy's own reconnect backoff took 11-13 s to reach a restarted xDS
# server; with these bounds it reconnected in about 0.3 s.
ADS_RETRY_BASE = 0.1
ADS_RETRY_MAX = 1.0

ADMIN_ADDRESS = "127.0.0.1"

# Envoy writes its own log lines as JSON objects, so Monoceros's log reader
# passes them through with the worker id added instead of wrapping them.
_LOG_FORMAT = {
    "time": "%Y-%m-%dT%T.%e%z",
    "level": "%l",
    "logger": "%n",
    "message": "%j",
}


def build_bootstrap(
    pool: PoolConfig,
    xds_socket: str,
    *,
    delta: bool = False,
    instance: str = "",
) -> bootstrap_pb2.Bootstrap:
    """The bootstrap for ``pool``'s Envoy, fed over ADS from ``xds_socket``.

    ``xds_socket`` is the Unix socket path of the xDS server, used as given:
    pass it absolute, as Envoy resolves a relative one against its own
    working directory.

    ``delta`` selects incremental xDS (``DELTA_GRPC``) instead of the state
    of the world (``GRPC``).

    ``instance`` goes into the node's metadata (``monoceros_instance``) so
    that Monoceros can tell its own Envoy from another one answering on the
    same admin port.
    """
    if pool.server is None:
        raise ConfigError(
            f"supervisor.workers[{pool.name}].server",
            "a pool without a server section runs no Envoy",
        )
    _check_socket_path(xds_socket)

    bootstrap = bootstrap_pb2.Bootstrap(
        node=base_pb2.Node(id=names.node_id(pool.name), cluster=names.NODE_CLUSTER),
        admin=bootstrap_pb2.Admin(
            address=socket_address(ADMIN_ADDRESS, pool.server.admin_port)
        ),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(
            clusters=[_ads_cluster(xds_socket)]
        ),
        dynamic_resources=bootstrap_pb2.Bootstrap.DynamicResources(
            ads_config=_ads_config(delta),
            # Envoy's default gives up waiting for the first LDS/CDS answer
            # after 15 s and then reports itself ready with no listener. 0
            # waits for ever, so LIVE means the pool's resources are there.
            lds_config=ads_source(initial_fetch_timeout=0),
            cds_config=ads_source(initial_fetch_timeout=0),
        ),
    )
    if instance:
        bootstrap.node.metadata.update({names.INSTANCE_KEY: instance})
    log_format = struct_pb2.Struct()
    log_format.update(_LOG_FORMAT)
    bootstrap.application_log_config.log_format.json_format.CopyFrom(log_format)
    return bootstrap


def write_bootstrap(bootstrap: bootstrap_pb2.Bootstrap, directory: str) -> str:
    """Write ``bootstrap`` as JSON to ``<directory>/<pool>-bootstrap.json``.

    The file is written to a temporary name in the same directory and renamed
    over the old one, so an Envoy starting at that moment reads either the
    old file or the new one, never half of one. Returns the path.
    """
    pool = names.pool_of_node(bootstrap.node.id)
    os.makedirs(directory, exist_ok=True)
    # Absolute, so Envoy finds it whatever working directory it is given.
    path = os.path.abspath(os.path.join(directory, names.bootstrap_filename(pool)))
    text = json_format.MessageToJson(bootstrap, indent=2, sort_keys=True)

    fd, tmp = tempfile.mkstemp(prefix=".bootstrap-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def _check_socket_path(xds_socket: str) -> None:
    if not xds_socket:
        raise ConfigError("xds.socket", "the xDS socket path is empty")
    size = len(os.fsencode(xds_socket))
    if size > MAX_SOCKET_PATH:
        raise ConfigError(
            "xds.socket",
            f"{xds_socket!r} is {size} bytes; a Unix socket path holds at most "
            f"{MAX_SOCKET_PATH}",
        )


def _ads_cluster(xds_socket: str) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=names.ADS_CLUSTER,
        type=cluster_pb2.Cluster.STATIC,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=names.ADS_CLUSTER,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(
                                address=address_pb2.Address(
                                    pipe=address_pb2.Pipe(path=xds_socket)
                                )
                            )
                        )
                    ]
                )
            ],
        ),
    )
    cluster.connect_timeout.FromSeconds(1)
    # gRPC needs HTTP/2. Without it Envoy talks HTTP/1.1 to the xDS server,
    # gets nothing, logs nothing useful and reports ready with no listeners.
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(
        upstream_http2()
    )
    return cluster


def _ads_config(delta: bool) -> config_source_pb2.ApiConfigSource:
    api_type = (
        config_source_pb2.ApiConfigSource.DELTA_GRPC
        if delta
        else config_source_pb2.ApiConfigSource.GRPC
    )
    envoy_grpc = grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=names.ADS_CLUSTER)
    backoff = envoy_grpc.retry_policy.retry_back_off
    backoff.base_interval.FromMilliseconds(int(ADS_RETRY_BASE * 1000))
    backoff.max_interval.FromMilliseconds(int(ADS_RETRY_MAX * 1000))
    return config_source_pb2.ApiConfigSource(
        api_type=api_type,
        transport_api_version=config_source_pb2.V3,
        grpc_services=[grpc_service_pb2.GrpcService(envoy_grpc=envoy_grpc)],
    )
