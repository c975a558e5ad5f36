"""Every built resource passes `envoy --mode validate` with the real binary.

For each balancing algorithm and protocol, the built cluster (made STATIC with
the built CLA inline), listener and route go into a bootstrap; the listener
appears twice: as built (its route over RDS) and with the route inline.
"""

from __future__ import annotations

import subprocess

import pytest
from envoy_testing import free_port, inline_route, make_pool, static_setup

from monoceros.config import LB_ALGORITHMS, PROTOCOLS
from monoceros.envoy import bootstrap, resources
from monoceros.envoy.resources import Endpoint

pytestmark = pytest.mark.envoy


def validate(envoy_binary: str, path: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [envoy_binary, "--mode", "validate", "--disable-hot-restart", "-c", path],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("algorithm", LB_ALGORITHMS)
def test_resources_validate(envoy_binary, tmp_path, algorithm, protocol):
    pool = make_pool(algorithm=algorithm, protocol=protocol, listener_port=free_port())
    endpoints = [
        Endpoint("127.0.0.1", 18001, worker_id="web_0"),
        Endpoint("127.0.0.1", 18002, draining=True, worker_id="web_1"),
    ]
    config = static_setup(pool, str(tmp_path / "xds.sock"), endpoints)

    # The listener as built, route over RDS: needs the ADS config back.
    as_built = bootstrap.build_bootstrap(pool, str(tmp_path / "xds.sock"))
    config.dynamic_resources.CopyFrom(as_built.dynamic_resources)
    rds_listener = resources.build_listener(pool)
    rds_listener.name += "-rds"
    rds_listener.address.socket_address.port_value = free_port()
    config.static_resources.listeners.append(rds_listener)

    out = validate(envoy_binary, bootstrap.write_bootstrap(config, str(tmp_path)))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout


def test_empty_load_assignment_validates(envoy_binary, tmp_path):
    pool = make_pool(listener_port=free_port())
    config = static_setup(pool, str(tmp_path / "xds.sock"), [])
    out = validate(envoy_binary, bootstrap.write_bootstrap(config, str(tmp_path)))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("delta", [False, True])
def test_ads_bootstrap_validates(envoy_binary, tmp_path, delta):
    config = bootstrap.build_bootstrap(
        make_pool(), str(tmp_path / "xds.sock"), delta=delta
    )
    out = validate(envoy_binary, bootstrap.write_bootstrap(config, str(tmp_path)))
    assert out.returncode == 0, out.stdout + out.stderr


def test_validation_catches_a_broken_resource(envoy_binary, tmp_path):
    # The check above can fail: a route to a cluster Envoy lacks is refused.
    pool = make_pool(listener_port=free_port())
    config = static_setup(pool, str(tmp_path / "xds.sock"), [])
    config.static_resources.clusters[-1].name = "elsewhere"
    listener = config.static_resources.listeners[0]
    inline_route(listener.filter_chains[0].filters[0].typed_config, pool)
    out = validate(envoy_binary, bootstrap.write_bootstrap(config, str(tmp_path)))
    assert out.returncode != 0
    assert "unknown cluster 'web'" in out.stdout + out.stderr
