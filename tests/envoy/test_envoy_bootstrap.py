"""Unit tests of the bootstrap and of writing it."""

from __future__ import annotations

import json
import os

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy_testing import make_pool
from google.protobuf import json_format

from monoceros.envoy import bootstrap, names, resources
from monoceros.errors import ConfigError


def test_node_and_admin():
    config = bootstrap.build_bootstrap(make_pool(admin_port=19901), "/run/m/x.sock")
    assert config.node.id == "monoceros-web"
    assert config.node.cluster == "monoceros"
    admin = config.admin.address.socket_address
    assert (admin.address, admin.port_value) == ("127.0.0.1", 19901)


def test_ads_cluster_is_static_http2_over_the_socket():
    config = bootstrap.build_bootstrap(make_pool(), "/run/m/x.sock")
    (cluster,) = config.static_resources.clusters
    assert cluster.name == names.ADS_CLUSTER
    assert cluster.type == cluster.STATIC
    (locality,) = cluster.load_assignment.endpoints
    (host,) = locality.lb_endpoints
    assert host.endpoint.address.pipe.path == "/run/m/x.sock"

    options = http_protocol_options_pb2.HttpProtocolOptions()
    packed = cluster.typed_extension_protocol_options[resources.HTTP_PROTOCOL_OPTIONS]
    assert packed.Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")


@pytest.mark.parametrize(
    "delta, api_type",
    [
        (False, config_source_pb2.ApiConfigSource.GRPC),
        (True, config_source_pb2.ApiConfigSource.DELTA_GRPC),
    ],
)
def test_ads_config(delta, api_type):
    dynamic = bootstrap.build_bootstrap(make_pool(), "/x.sock", delta=delta)
    dynamic = dynamic.dynamic_resources
    ads = dynamic.ads_config
    assert ads.api_type == api_type
    assert ads.transport_api_version == config_source_pb2.V3
    (service,) = ads.grpc_services
    assert service.envoy_grpc.cluster_name == names.ADS_CLUSTER
    backoff = service.envoy_grpc.retry_policy.retry_back_off
    assert backoff.base_interval.ToMilliseconds() == 100
    assert backoff.max_interval.ToMilliseconds() == 1000

    for source in (dynamic.lds_config, dynamic.cds_config):
        assert source.HasField("ads")
        assert source.resource_api_version == config_source_pb2.V3
        assert source.HasField("initial_fetch_timeout")
        assert source.initial_fetch_timeout.ToNanoseconds() == 0


def test_socket_path_too_long_is_refused():
    path = "/" + "s" * 120
    with pytest.raises(ConfigError, match="xds.socket: .* is 121 bytes"):
        bootstrap.build_bootstrap(make_pool(), path)


def test_pool_without_server_is_refused():
    plain = type(make_pool())(name="plain", exec="true")
    with pytest.raises(ConfigError, match=r"\[plain\].server"):
        bootstrap.build_bootstrap(plain, "/x.sock")


def test_write_bootstrap_round_trips(tmp_path):
    directory = tmp_path / "not" / "yet"
    config = bootstrap.build_bootstrap(make_pool(name="api"), "/x.sock", delta=True)

    path = bootstrap.write_bootstrap(config, str(directory))

    assert path == str(directory / "api-bootstrap.json")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert json.loads(text)["node"]["id"] == "monoceros-api"
    assert json_format.Parse(text, bootstrap_pb2.Bootstrap()) == config
    assert os.listdir(directory) == ["api-bootstrap.json"]  # no temp file left


def test_write_bootstrap_replaces_the_old_file(tmp_path):
    old = bootstrap.build_bootstrap(make_pool(admin_port=1), "/x.sock")
    new = bootstrap.build_bootstrap(make_pool(admin_port=2), "/x.sock")
    bootstrap.write_bootstrap(old, str(tmp_path))

    path = bootstrap.write_bootstrap(new, str(tmp_path))

    with open(path, encoding="utf-8") as f:
        assert json_format.Parse(f.read(), bootstrap_pb2.Bootstrap()) == new
    assert os.listdir(tmp_path) == ["web-bootstrap.json"]
