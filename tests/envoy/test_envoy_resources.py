"""Unit tests of the resource builders: the fields that carry a decision."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import http_pb2
from envoy_testing import make_pool

from monoceros.envoy import names, resources
from monoceros.envoy.resources import Endpoint


def test_names_contract():
    assert names.node_id("web") == "monoceros-web"
    assert names.pool_of_node("monoceros-web") == "web"
    assert names.NODE_CLUSTER == "monoceros"
    assert names.ADS_CLUSTER == "monoceros_xds"
    assert names.cluster_name("web") == "web"
    assert names.route_name("web") == "web"
    assert names.listener_name("web") == "web-listener"
    with pytest.raises(ValueError, match="not made by Monoceros"):
        names.pool_of_node("envoy-web")


@pytest.mark.parametrize("algorithm", ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"])
def test_cluster_lb_policy_plain(algorithm):
    cluster = resources.build_cluster(make_pool(algorithm=algorithm))
    assert cluster_pb2.Cluster.LbPolicy.Name(cluster.lb_policy) == algorithm
    route = resources.build_route_configuration(make_pool(algorithm=algorithm))
    assert not route.virtual_hosts[0].routes[0].route.hash_policy


@pytest.mark.parametrize("algorithm", ["RING_HASH", "MAGLEV"])
def test_hash_algorithms_get_header_then_source_ip(algorithm):
    pool = make_pool(algorithm=algorithm)
    cluster = resources.build_cluster(pool)
    assert cluster_pb2.Cluster.LbPolicy.Name(cluster.lb_policy) == algorithm

    policies = resources.build_route_configuration(pool).virtual_hosts[0]
    policies = policies.routes[0].route.hash_policy
    assert policies[0].header.header_name == names.HASH_HEADER
    assert policies[0].terminal
    assert policies[1].connection_properties.source_ip


def test_cluster_is_eds_over_ads():
    cluster = resources.build_cluster(make_pool(name="api"))
    assert cluster.name == "api"
    assert cluster.type == cluster_pb2.Cluster.EDS
    assert cluster.eds_cluster_config.eds_config.HasField("ads")
    assert cluster.connect_timeout.ToMilliseconds() == 1000
    assert cluster.ignore_health_on_host_removal


def test_cluster_health_check():
    (check,) = resources.build_cluster(make_pool()).health_checks
    assert check.http_health_check.path == "/healthz"
    assert check.http_health_check.codec_client_type == http_pb2.HTTP1
    (statuses,) = check.http_health_check.expected_statuses
    assert (statuses.start, statuses.end) == (200, 300)
    assert check.interval.ToMilliseconds() == 1000
    assert check.timeout.ToMilliseconds() == 1000
    assert check.no_traffic_interval.ToMilliseconds() <= 1000
    assert check.unhealthy_threshold.value == 2
    assert check.healthy_threshold.value == 1


def test_cluster_outlier_breakers_panic_and_merge_window():
    cluster = resources.build_cluster(make_pool())
    outlier = cluster.outlier_detection
    assert outlier.consecutive_5xx.value == 5
    assert outlier.consecutive_gateway_failure.value == 3
    assert outlier.enforcing_consecutive_gateway_failure.value == 100
    assert outlier.max_ejection_percent.value == 50

    (threshold,) = cluster.circuit_breakers.thresholds
    assert threshold.max_retries.value == resources.MAX_RETRIES > 3

    lb = cluster.common_lb_config
    assert lb.HasField("healthy_panic_threshold")
    assert lb.healthy_panic_threshold.value == 0.0
    assert lb.HasField("update_merge_window")
    assert lb.update_merge_window.ToNanoseconds() == 0


def test_http1_cluster_has_no_protocol_options():
    cluster = resources.build_cluster(make_pool(protocol="http1"))
    assert not cluster.typed_extension_protocol_options


@pytest.mark.parametrize("protocol", ["http2", "grpc"])
def test_h2_upstreams(protocol):
    cluster = resources.build_cluster(make_pool(protocol=protocol))
    options = http_protocol_options_pb2.HttpProtocolOptions()
    packed = cluster.typed_extension_protocol_options[resources.HTTP_PROTOCOL_OPTIONS]
    assert packed.Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")


def test_http2_health_check_speaks_http2():
    (check,) = resources.build_cluster(make_pool(protocol="http2")).health_checks
    assert check.http_health_check.path == "/healthz"
    assert check.http_health_check.codec_client_type == http_pb2.HTTP2


def test_grpc_health_check_uses_the_grpc_health_service():
    (check,) = resources.build_cluster(make_pool(protocol="grpc")).health_checks
    assert check.WhichOneof("health_checker") == "grpc_health_check"
    assert check.grpc_health_check.service_name == ""
    assert check.interval.ToMilliseconds() == 1000


def test_route_retries_and_timeouts():
    route = resources.build_route_configuration(make_pool(name="api"))
    assert route.name == "api"
    (host,) = route.virtual_hosts
    assert list(host.domains) == ["*"]
    (only,) = host.routes
    assert only.match.prefix == "/"

    action = only.route
    assert action.cluster == "api"
    assert action.HasField("timeout") and action.timeout.ToNanoseconds() == 0
    policy = action.retry_policy
    assert policy.retry_on == "connect-failure,reset,refused-stream"
    assert policy.num_retries.value == 3
    assert [p.name for p in policy.retry_host_predicate] == [resources.PREVIOUS_HOSTS]
    assert policy.host_selection_retry_max_attempts == 5
    assert not policy.HasField("per_try_timeout")


def test_grpc_route_retries_unavailable_not_cancelled():
    policy = resources.build_route_configuration(make_pool(protocol="grpc"))
    retry_on = policy.virtual_hosts[0].routes[0].route.retry_policy.retry_on
    assert "unavailable" in retry_on.split(",")
    assert "cancelled" not in retry_on.split(",")


def test_listener():
    pool = make_pool(name="api", listener_port=18080)
    listener = resources.build_listener(pool)
    assert listener.name == "api-listener"
    assert listener.address.socket_address.address == "127.0.0.1"
    assert listener.address.socket_address.port_value == 18080
    assert listener.HasField("enable_reuse_port")
    assert listener.enable_reuse_port.value is False

    (chain,) = listener.filter_chains
    (network_filter,) = chain.filters
    assert network_filter.name == resources.HCM_FILTER
    manager = hcm_pb2.HttpConnectionManager()
    assert network_filter.typed_config.Unpack(manager)
    assert manager.stat_prefix == "api"
    assert manager.codec_type == hcm_pb2.HttpConnectionManager.AUTO
    assert manager.rds.route_config_name == "api"
    assert manager.rds.config_source.HasField("ads")
    assert [f.name for f in manager.http_filters] == [resources.ROUTER_FILTER]


def test_load_assignment_marks_draining_and_names_workers():
    cla = resources.build_load_assignment(
        "api",
        [
            Endpoint("127.0.0.1", 8001, worker_id="api_0"),
            Endpoint("127.0.0.1", 8002, draining=True, worker_id="api_1"),
        ],
    )
    assert cla.cluster_name == "api"
    (locality,) = cla.endpoints
    serving, draining = locality.lb_endpoints
    assert serving.health_status == health_check_pb2.UNKNOWN
    assert draining.health_status == health_check_pb2.DRAINING
    assert serving.endpoint.address.socket_address.port_value == 8001
    assert serving.endpoint.hostname == "api_0"
    metadata = draining.metadata.filter_metadata[names.METADATA_NAMESPACE]
    assert metadata.fields["worker_id"].string_value == "api_1"


def test_empty_load_assignment_still_names_the_cluster():
    cla = resources.build_load_assignment("api", [])
    assert cla.cluster_name == "api"
    assert sum(len(loc.lb_endpoints) for loc in cla.endpoints) == 0
    assert cla.SerializeToString()  # not an empty message: the name is there


@pytest.mark.parametrize(
    "endpoint, message",
    [
        (Endpoint("localhost", 8001, worker_id="api_0"), "api_0: address"),
        (Endpoint("127.0.0.1", 0, worker_id="api_0"), "api_0: port 0"),
        (Endpoint("127.0.0.1", 70000), "port 70000"),
    ],
)
def test_bad_endpoint_is_named(endpoint, message):
    with pytest.raises(ValueError, match=message):
        resources.build_load_assignment("api", [endpoint])


def test_builders_are_deterministic():
    pool = make_pool(algorithm="MAGLEV", protocol="grpc")
    endpoints = [Endpoint("127.0.0.1", 8001, worker_id="w")]
    for build in (
        resources.build_cluster,
        resources.build_listener,
        resources.build_route_configuration,
    ):
        assert build(pool).SerializeToString(deterministic=True) == build(
            pool
        ).SerializeToString(deterministic=True)
    first = resources.build_load_assignment("web", endpoints)
    assert first == resources.build_load_assignment("web", endpoints)


def test_pool_without_server_is_refused():
    pool = make_pool()
    plain = type(pool)(name="plain", exec="true")
    with pytest.raises(ValueError, match="'plain' has no server section"):
        resources.build_cluster(plain)
