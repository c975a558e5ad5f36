"""A pool's xDS resources, built from its configuration as typed protobufs.

Pure functions: the same configuration (and the same endpoints) always
gives the same messages, so the xDS server can compare versions by content.
The reasons behind each setting are in docs/envoy.md.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from envoy.config.cluster.v3 import (
    circuit_breaker_pb2,
    cluster_pb2,
    outlier_detection_pb2,
)
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    health_check_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import http_pb2, range_pb2
from google.protobuf import any_pb2, struct_pb2
from google.protobuf.message import Message

from monoceros.config import PoolConfig, ServerConfig
from monoceros.envoy import names

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"

HASH_ALGORITHMS = ("RING_HASH", "MAGLEV")

CONNECT_TIMEOUT = 1.0
HEALTH_CHECK_INTERVAL = 1.0
HEALTH_CHECK_TIMEOUT = 1.0
UNHEALTHY_THRESHOLD = 2
HEALTHY_THRESHOLD = 1

NUM_RETRIES = 3
HOST_SELECTION_ATTEMPTS = 5
RETRY_ON = "connect-failure,reset,refused-stream"
# A gRPC server that is shutting down answers UNAVAILABLE, which gRPC defines
# as "not processed, safe to retry". CANCELLED is left out: the call may have
# run, and a client cancelling its own call must not be retried.
GRPC_RETRY_ON = RETRY_ON + ",unavailable"

# Envoy's default of 3 concurrent retries per cluster refused 95 % of the
# retries a recycle needs; as many retries as requests may be in flight.
MAX_RETRIES = 1024

_LB_POLICIES = {
    "ROUND_ROBIN": cluster_pb2.Cluster.ROUND_ROBIN,
    "LEAST_REQUEST": cluster_pb2.Cluster.LEAST_REQUEST,
    "RANDOM": cluster_pb2.Cluster.RANDOM,
    "RING_HASH": cluster_pb2.Cluster.RING_HASH,
    "MAGLEV": cluster_pb2.Cluster.MAGLEV,
}


@dataclass(frozen=True)
class Endpoint:
    """One worker as Envoy should see it.

    ``draining`` marks a worker that is being stopped: Envoy sends it no new
    request but lets the ones in flight finish.
    """

    address: str
    port: int
    draining: bool = False
    worker_id: str = ""


def ads_source(
    initial_fetch_timeout: float | None = None,
) -> config_source_pb2.ConfigSource:
    """A ConfigSource meaning "over the ADS stream, API v3"."""
    source = config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )
    if initial_fetch_timeout is not None:
        source.initial_fetch_timeout.SetInParent()
        source.initial_fetch_timeout.FromNanoseconds(round(initial_fetch_timeout * 1e9))
    return source


def upstream_http2() -> any_pb2.Any:
    """Cluster protocol options: talk HTTP/2 (cleartext) to the upstream."""
    HttpProtocolOptions = http_protocol_options_pb2.HttpProtocolOptions
    return _any(
        HttpProtocolOptions(
            explicit_http_config=HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
            )
        )
    )


def socket_address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host, port_value=port)
    )


def build_cluster(pool: PoolConfig) -> cluster_pb2.Cluster:
    """The pool's EDS cluster: balancing, health checks, outlier detection."""
    server = _server(pool)
    cluster = cluster_pb2.Cluster(
        name=names.cluster_name(pool.name),
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=ads_source()
        ),
        lb_policy=_LB_POLICIES[server.load_balancer_algorithm],
        health_checks=[_health_check(server)],
        outlier_detection=_outlier_detection(),
        circuit_breakers=circuit_breaker_pb2.CircuitBreakers(
            thresholds=[
                circuit_breaker_pb2.CircuitBreakers.Thresholds(
                    priority=base_pb2.DEFAULT
                )
            ]
        ),
        ignore_health_on_host_removal=True,
    )
    cluster.connect_timeout.FromMilliseconds(int(CONNECT_TIMEOUT * 1000))
    cluster.circuit_breakers.thresholds[0].max_retries.value = MAX_RETRIES

    # In panic mode (fewer than half the hosts healthy) Envoy spreads new
    # requests over hosts failing their health check too: measured, 20 of 30
    # requests went to two failing workers beside one healthy one. 0 turns
    # panic mode off (docs/envoy.md, "Panic threshold").
    lb = cluster.common_lb_config
    lb.healthy_panic_threshold.value = 0.0

    # Envoy may hold an update that changes only health or metadata for up
    # to 1 s when it follows another update, to batch them. With Envoy 1.40 a
    # DRAINING mark was measured to apply at once even so; 0 makes "at once"
    # not depend on what else changed in the last second.
    lb.update_merge_window.SetInParent()
    lb.update_merge_window.FromSeconds(0)

    if server.protocol in ("http2", "grpc"):
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(
            upstream_http2()
        )
    return cluster


def build_route_configuration(pool: PoolConfig) -> route_pb2.RouteConfiguration:
    """Everything to the pool's cluster, retried on another worker if refused."""
    server = _server(pool)
    retry = route_components_pb2.RetryPolicy(
        retry_on=GRPC_RETRY_ON if server.protocol == "grpc" else RETRY_ON,
        retry_host_predicate=[
            route_components_pb2.RetryPolicy.RetryHostPredicate(
                name=PREVIOUS_HOSTS,
                typed_config=_any(previous_hosts_pb2.PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=HOST_SELECTION_ATTEMPTS,
    )
    retry.num_retries.value = NUM_RETRIES

    action = route_components_pb2.RouteAction(
        cluster=names.cluster_name(pool.name), retry_policy=retry
    )
    # No overall timeout: Envoy's default of 15 s would cut long requests and
    # streams. No per-try timeout either: only the application knows how
    # long a request may take, and a timed-out try may still have run.
    action.timeout.SetInParent()
    action.timeout.FromSeconds(0)
    if server.load_balancer_algorithm in HASH_ALGORITHMS:
        action.hash_policy.extend(_hash_policy())

    return route_pb2.RouteConfiguration(
        name=names.route_name(pool.name),
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=pool.name,
                domains=["*"],
                routes=[
                    route_components_pb2.Route(
                        match=route_components_pb2.RouteMatch(prefix="/"),
                        route=action,
                    )
                ],
            )
        ],
    )


def build_listener(pool: PoolConfig) -> listener_pb2.Listener:
    """The pool's public port: HTTP/1.1 and h2c, routes fetched over RDS."""
    server = _server(pool)
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=pool.name,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(
            config_source=ads_source(), route_config_name=names.route_name(pool.name)
        ),
        http_filters=[
            hcm_pb2.HttpFilter(
                name=ROUTER_FILTER, typed_config=_any(router_pb2.Router())
            )
        ],
    )
    listener = listener_pb2.Listener(
        name=names.listener_name(pool.name),
        address=socket_address(server.listener_address, server.listener_port),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name=HCM_FILTER, typed_config=_any(manager)
                    )
                ]
            )
        ],
    )
    # With SO_REUSEPORT a second Envoy given the same port binds it silently
    # and the kernel splits connections between them; off, it fails loudly.
    listener.enable_reuse_port.value = False
    return listener


def build_load_assignment(
    pool_name: str, endpoints: list[Endpoint]
) -> endpoint_pb2.ClusterLoadAssignment:
    """The pool's endpoints; an empty list still names the cluster.

    A CLA is never omitted: for EDS an absent CLA means "unchanged", not
    "no endpoints". Each endpoint carries its worker id as hostname and in
    the ``monoceros`` metadata so Envoy's /clusters shows which is which.
    """
    lb_endpoints = [_lb_endpoint(e) for e in endpoints]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=names.cluster_name(pool_name),
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb_endpoints)
        ],
    )


def _lb_endpoint(endpoint: Endpoint) -> endpoint_components_pb2.LbEndpoint:
    _check_endpoint(endpoint)
    lb_endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=socket_address(endpoint.address, endpoint.port),
            hostname=endpoint.worker_id,
        ),
        # UNKNOWN leaves the verdict to Envoy's own health check. DRAINING
        # takes the host out of balancing at once while its requests finish.
        health_status=health_check_pb2.DRAINING
        if endpoint.draining
        else health_check_pb2.UNKNOWN,
    )
    if endpoint.worker_id:
        fields = struct_pb2.Struct()
        fields.update({"worker_id": endpoint.worker_id})
        lb_endpoint.metadata.filter_metadata[names.METADATA_NAMESPACE].CopyFrom(fields)
    return lb_endpoint


def _check_endpoint(endpoint: Endpoint) -> None:
    try:
        ipaddress.ip_address(endpoint.address)
    except ValueError:
        raise ValueError(
            f"endpoint {endpoint.worker_id or endpoint.port}: address "
            f"{endpoint.address!r} is not an IP address"
        ) from None
    if not 1 <= endpoint.port <= 65535:
        raise ValueError(
            f"endpoint {endpoint.worker_id or endpoint.address}: port "
            f"{endpoint.port!r} is not in 1-65535"
        )


def _health_check(server: ServerConfig) -> health_check_pb2.HealthCheck:
    HealthCheck = health_check_pb2.HealthCheck
    if server.protocol == "grpc":
        # A gRPC server resets a plain GET stream whatever its path (measured
        # with grpcio: every worker failed its check and got no traffic), so
        # gRPC pools are checked with the standard grpc.health.v1 service,
        # for the server as a whole (empty service name).
        check = HealthCheck(grpc_health_check=HealthCheck.GrpcHealthCheck())
    else:
        codec = http_pb2.HTTP1 if server.protocol == "http1" else http_pb2.HTTP2
        check = HealthCheck(
            http_health_check=HealthCheck.HttpHealthCheck(
                path=server.health_check_path,
                codec_client_type=codec,
                # Envoy accepts only 200 by default; Monoceros's probe, any 2xx.
                expected_statuses=[range_pb2.Int64Range(start=200, end=300)],
            )
        )

    check.timeout.FromMilliseconds(int(HEALTH_CHECK_TIMEOUT * 1000))
    check.interval.FromMilliseconds(int(HEALTH_CHECK_INTERVAL * 1000))
    check.interval_jitter.FromMilliseconds(100)
    # Without traffic Envoy checks only once a minute by default, so a
    # worker gone bad on an idle pool would be noticed far too late.
    check.no_traffic_interval.FromMilliseconds(int(HEALTH_CHECK_INTERVAL * 1000))
    check.unhealthy_threshold.value = UNHEALTHY_THRESHOLD
    check.healthy_threshold.value = HEALTHY_THRESHOLD
    return check


def _outlier_detection() -> outlier_detection_pb2.OutlierDetection:
    detection = outlier_detection_pb2.OutlierDetection()
    detection.consecutive_5xx.value = 5
    detection.consecutive_gateway_failure.value = 3
    # Envoy counts gateway failures but, by default, never ejects for them.
    detection.enforcing_consecutive_gateway_failure.value = 100
    detection.interval.FromSeconds(1)
    detection.base_ejection_time.FromSeconds(5)
    # At most half the pool may be ejected; Envoy still ejects one host of a
    # pool too small for half to make a whole host.
    detection.max_ejection_percent.value = 50
    return detection


def _hash_policy() -> list[route_components_pb2.RouteAction.HashPolicy]:
    # The header policy is terminal: when the header is present its hash is
    # used alone; otherwise Envoy goes on to the client's source address.
    HashPolicy = route_components_pb2.RouteAction.HashPolicy
    return [
        HashPolicy(
            header=HashPolicy.Header(header_name=names.HASH_HEADER), terminal=True
        ),
        HashPolicy(
            connection_properties=HashPolicy.ConnectionProperties(source_ip=True)
        ),
    ]


def _server(pool: PoolConfig) -> ServerConfig:
    if pool.server is None:
        raise ValueError(f"pool {pool.name!r} has no server section: no Envoy")
    if pool.server.load_balancer_algorithm not in _LB_POLICIES:
        raise ValueError(
            f"pool {pool.name!r}: unknown load_balancer_algorithm "
            f"{pool.server.load_balancer_algorithm!r}"
        )
    return pool.server


def _any(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
