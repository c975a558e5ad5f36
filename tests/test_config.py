"""Loading and validating configuration files."""

from __future__ import annotations

import os
import stat
import textwrap

import pytest
import yaml
from config_cases import EXPECTED_VALUES, INVALID_CASES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monoceros.config import (
    AdminConfig,
    BackoffConfig,
    Config,
    LimitsConfig,
    load_config,
    parse_config,
)
from monoceros.errors import ConfigError, ExitStatus


def _write(path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


def _executable(path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


# The original's examples/config.yaml and examples/httpbin.yaml, verbatim.
ORIGINAL_CONFIG = """\
admin:
  port: 9000
supervisor:
  workers:
    - name: processbin
      replicas: 30
      exec: ./dist/processbin
      args:
        - --exit-after
        - 5
        - --log-structured
      signal_timeout: 15s
      max_restarts: 3
      startup_wait_time: 500ms
      desired_healthy_percentage: 75
      limits:
        lifespan: 4h
"""

ORIGINAL_HTTPBIN = """\
admin:
  port: 9000
supervisor:
  workers:
    - name: httpbin
      replicas: 3
      exec: ./dist/go-httpbin
      signal_timeout: 15s
      max_restarts: 3
      server:
        port_arg:
          name: -port
          value_template: '{{.Port}}'
          start_port: 9090
        signal_timeout: 20s
        health_check_path: '/health'
        load_balancer_algorithm: LEAST_REQUEST
        admin_port: 8080
        listener_port: 8081
      limits:
        lifespan: 4h
"""


def test_original_example_loads(tmp_path):
    exe = _executable(tmp_path / "dist" / "processbin")
    config = load_config(_write(tmp_path / "config.yaml", ORIGINAL_CONFIG))

    assert config.path == str(tmp_path / "config.yaml")
    assert config.admin == AdminConfig(address="127.0.0.1", port=9000)
    assert not config.proxy_mode
    (pool,) = config.pools
    assert pool.name == "processbin"
    assert pool.replicas == 30
    assert pool.exec == "./dist/processbin"
    assert pool.exec_path == exe
    assert pool.args == ("--exit-after", "5", "--log-structured")
    assert pool.signal_timeout == 15.0
    assert pool.max_restarts == 3
    assert pool.startup_wait_time == 0.5
    assert pool.desired_healthy_percentage == 75
    assert pool.limits == LimitsConfig(lifespan=4 * 3600.0)


def test_original_httpbin_example_loads(tmp_path):
    _executable(tmp_path / "dist" / "go-httpbin")
    config = load_config(_write(tmp_path / "httpbin.yaml", ORIGINAL_HTTPBIN))

    assert config.proxy_mode
    pool = config.pool("httpbin")
    server = pool.server
    assert server.port_arg.name == "-port"
    assert server.port_arg.value_template == "{{.Port}}"
    assert server.port_arg.start_port == 9090
    assert pool.port_range() == range(9090, 9096)
    assert server.health_check_path == "/health"
    assert server.load_balancer_algorithm == "LEAST_REQUEST"
    assert server.admin_port == 8080
    assert server.listener_port == 8081
    assert server.listener_address == "0.0.0.0"
    assert server.signal_timeout == 20.0
    assert server.protocol == "http1"
    assert server.proxy_config_path == str(tmp_path / "envoy")


def test_minimal_pool_gets_defaults(tmp_path):
    config = parse_config(
        {"supervisor": {"workers": [{"name": "web", "exec": "sh"}]}},
        base_dir=str(tmp_path),
    )

    assert config.admin == AdminConfig()
    assert config.xds.socket is None and config.xds.tls is None
    assert config.path is None
    (pool,) = config.pools
    assert os.path.isabs(pool.exec_path)
    assert os.path.basename(pool.exec_path) == "sh"
    assert pool.replicas == 1
    assert pool.args == ()
    assert pool.max_restarts == 5
    assert pool.restart_window == 60.0
    assert pool.restart_backoff == BackoffConfig()
    assert pool.limits == LimitsConfig()
    assert pool.env == () and pool.cwd is None and pool.server is None
    assert pool.signal_timeout == 10.0


def test_nulls_mean_defaults(tmp_path):
    config = parse_config(
        yaml.safe_load(
            """
            admin: null
            xds: ~
            supervisor:
              workers:
                - {name: web, exec: sh, replicas: null, args: null, limits: null,
                   env: null, server: null, restart_backoff: null}
            """
        ),
        base_dir=str(tmp_path),
    )
    assert config.admin == AdminConfig()
    assert config.pools[0].replicas == 1
    assert config.pools[0].server is None


def test_every_new_field(tmp_path):
    app = tmp_path / "app"
    _executable(app / "bin" / "server")
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("x")

    path = _write(
        tmp_path / "monoceros.yaml",
        """\
        admin: {address: 0.0.0.0, port: 0}
        xds:
          socket: run/xds.sock
          address: 127.0.0.1:18000
          tls: {cert: cert.pem, key: key.pem, client_ca: ca.pem}
        supervisor:
          workers:
            - name: api.v2_x-1
              replicas: 2
              exec: server
              cwd: app
              env: {PATH: bin, DEBUG: on, COUNT: 3, RATIO: 0.5, FLAG: true}
              args: [-c, '1:30', 010, 0x10]
              signal_timeout: 0
              restart_window: 2m
              restart_backoff: {initial: 50ms, max: 1s, reset_after: 0}
              limits:
                lifespan: 1h30m
                jitter_ratio: 1
                memory: 512Mi
                memory_check_interval: 250ms
              server:
                port_arg: {name: --port, value_template: '--port={{ .Port }}',
                           start_port: 30000}
                health_check_path: /healthz
                load_balancer_algorithm: ring_hash
                admin_port: 30100
                listener_address: '::1'
                listener_port: 30101
                proxy_config_path: state/envoy
                protocol: GRPC
        """,
    )
    config = load_config(path)

    assert config.admin == AdminConfig(address="0.0.0.0", port=0)
    assert config.xds.socket == str(tmp_path / "run" / "xds.sock")
    assert config.xds.address == "127.0.0.1:18000"
    assert config.xds.tls.client_ca == str(tmp_path / "ca.pem")
    pool = config.pools[0]
    assert pool.cwd == str(app)
    # A bare name is looked up on the pool's own PATH, relative to its cwd.
    assert pool.exec_path == str(app / "bin" / "server")
    # YAML 1.2 scalars, as the Go original reads them: 'on' stays a string.
    assert pool.env == (
        ("PATH", "bin"),
        ("DEBUG", "on"),
        ("COUNT", "3"),
        ("RATIO", "0.5"),
        ("FLAG", "true"),
    )
    assert pool.args == ("-c", "1:30", "10", "16")
    assert pool.signal_timeout == 10.0  # 0 means the default, as in the original
    assert pool.restart_window == 120.0
    assert pool.restart_backoff == BackoffConfig(0.05, 1.0, 0.0)
    assert pool.limits == LimitsConfig(5400.0, 1.0, 512 * 2**20, 0.25)
    server = pool.server
    assert server.load_balancer_algorithm == "RING_HASH"
    assert server.protocol == "grpc"
    assert server.listener_address == "::1"
    assert server.proxy_config_path == str(tmp_path / "state" / "envoy")
    assert pool.port_range() == range(30000, 30004)


def test_relative_exec_resolves_from_config_dir(tmp_path, monkeypatch):
    exe = _executable(tmp_path / "conf" / "bin" / "worker")
    path = _write(
        tmp_path / "conf" / "c.yaml",
        "supervisor: {workers: [{name: w, exec: bin/worker}]}\n",
    )
    monkeypatch.chdir(tmp_path)
    assert load_config(path).pools[0].exec_path == exe

    os.chmod(exe, 0o644)
    not_executable = r"exec: 'bin/worker' \(.*worker\) is not executable"
    with pytest.raises(ConfigError, match=not_executable):
        load_config(path)


@pytest.mark.parametrize(("case_id", "text", "field"), INVALID_CASES)
def test_invalid_document(tmp_path, case_id, text, field):
    path = tmp_path / "monoceros.yaml"
    path.write_text(text)

    with pytest.raises(ConfigError) as info:
        load_config(str(path))

    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    assert field in message
    assert case_id not in EXPECTED_VALUES or EXPECTED_VALUES[case_id] in message
    assert "Traceback" not in message
    assert info.value.exit_status == ExitStatus.USAGE


def test_case_table_is_large_and_unique():
    ids = [case[0] for case in INVALID_CASES]
    assert len(ids) >= 30
    assert len(set(ids)) == len(ids)
    assert set(EXPECTED_VALUES) <= set(ids)


def test_messages_read_as_promised(tmp_path):
    def error(pool: dict) -> str:
        with pytest.raises(ConfigError) as info:
            parse_config({"supervisor": {"workers": [pool]}}, base_dir=str(tmp_path))
        return str(info.value)

    base = {"name": "web", "exec": "sh"}
    assert error({**base, "replicas": -2}) == (
        "supervisor.workers[0].replicas: must be an integer >= 1, got -2"
    )
    assert error({**base, "replica": 2}) == (
        "supervisor.workers[0].replica: unknown field; did you mean 'replicas'?"
    )
    assert error({**base, "limits": {"jitter_ratio": "high"}}) == (
        "supervisor.workers[0].limits.jitter_ratio: expected a number, "
        "got string 'high'"
    )
    assert error({**base, "args": ["ok", "a\x00b"]}) == (
        "supervisor.workers[0].args[1]: must not contain a NUL character"
    )
    assert error({**base, "env": {"A": 1, "B": [2]}}) == (
        "supervisor.workers[0].env.B: expected a string or a number, got list [2]"
    )
    server = {
        "port_arg": {"name": "-p", "value_template": "{{.Foo}}", "start_port": 9090},
        "health_check_path": "/",
    }
    assert error({**base, "server": server}) == (
        "supervisor.workers[0].server.port_arg.value_template: unknown template "
        "field '.Foo'; only {{.Port}} is supported"
    )


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = _write(tmp_path / "bad.yaml", "supervisor:\n  workers: [\n    - a\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    expected = f"{path}:3:5: invalid YAML: expected the node content"
    assert str(info.value).startswith(expected)


@pytest.mark.parametrize(
    "value", ["!!int abc", "!!float x", "!!timestamp x", "!!bool maybe", "{a: !!int x}"]
)
def test_explicit_yaml_tags_that_do_not_fit(tmp_path, value):
    text = f"supervisor:\n  workers:\n    - {{name: web, exec: sh, args: [{value}]}}\n"
    path = _write(tmp_path / "tags.yaml", text)
    with pytest.raises(
        ConfigError, match=r"tags.yaml:3:\d+: invalid YAML: cannot read"
    ):
        load_config(path)


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read .*No such file"):
        load_config(str(tmp_path / "absent.yaml"))
    with pytest.raises(ConfigError, match="cannot read .*directory"):
        load_config(str(tmp_path))


def test_invalid_bytes(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"supervisor:\n  workers: \xff\xfe\x00\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert len(str(info.value).splitlines()) == 1


def test_ports_of_two_pools_may_touch_but_not_overlap(tmp_path):
    def proxy(name, start, admin, listener):
        port_arg = {"name": "-p", "value_template": "{{.Port}}", "start_port": start}
        return {
            "name": name,
            "exec": "sh",
            "replicas": 2,
            "server": {
                "port_arg": port_arg,
                "health_check_path": "/",
                "admin_port": admin,
                "listener_port": listener,
            },
        }

    touching = [proxy("a", 20000, 21000, 21001), proxy("b", 20004, 21002, 21003)]
    config = parse_config({"supervisor": {"workers": touching}}, base_dir=tmp_path)
    assert [p.port_range() for p in config.pools] == [
        range(20000, 20004),
        range(20004, 20008),
    ]

    shared = [proxy("a", 20000, 21000, 21001), proxy("b", 20004, 21002, 21001)]
    with pytest.raises(ConfigError) as info:
        parse_config({"supervisor": {"workers": shared}}, base_dir=tmp_path)
    assert str(info.value) == (
        "supervisor.workers[1].server.listener_port: port 21001 is already used "
        "by supervisor.workers[0].server.listener_port"
    )


# --- property test: whatever the data, a Config or one clean ConfigError ----

_KEYS = st.sampled_from(
    [
        "name", "replicas", "exec", "args", "signal_timeout", "max_restarts",
        "restart_window", "restart_backoff", "startup_wait_time", "env", "cwd",
        "desired_healthy_percentage", "limits", "server", "port_arg", "start_port",
        "value_template", "health_check_path", "admin_port", "listener_port",
        "listener_address", "protocol", "load_balancer_algorithm", "lifespan",
        "memory", "jitter_ratio", "initial", "max", "reset_after", "admin", "xds",
        "socket", "address", "tls", "port", "supervisor", "workers", "PATH",
    ]
)  # fmt: skip
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "15s",
            "0",
            "1h30m",
            "-1s",
            "512Mi",
            "500m",
            "sh",
            "/bin/sh",
            "{{.Port}}",
            "{{.Foo}}",
            "/health",
            "127.0.0.1:18000",
            "::1",
            "ROUND_ROBIN",
            "grpc",
            ".",
        ]
    ),  # fmt: skip
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(_KEYS, st.text(max_size=6), st.integers()), inner, max_size=5
        ),
    ),  # fmt: skip
    max_leaves=12,
)


@st.composite
def _documents(draw):
    """A valid skeleton with random fields replaced or added at every level."""
    proxy = {
        "port_arg": {"name": "-p", "value_template": "{{.Port}}", "start_port": 20000},
        "health_check_path": "/health",
    }
    pool = {"name": "web", "exec": "sh", "replicas": 2, "limits": {}, "server": proxy}
    doc = {"admin": {"port": 9000}, "supervisor": {"workers": [pool]}}
    # Mostly keys that belong where they land, so values get validated; some
    # keys from anywhere, so unknown-field handling is exercised too.
    targets = [
        (doc, ["admin", "xds", "supervisor"]),
        (doc["admin"], ["address", "port"]),
        (pool, ["replicas", "exec", "args", "signal_timeout", "restart_backoff",
                "env", "cwd", "desired_healthy_percentage", "limits", "server"]),
        (pool["limits"], ["lifespan", "memory", "jitter_ratio"]),
        (proxy, ["admin_port", "listener_port", "listener_address", "protocol",
                 "load_balancer_algorithm", "health_check_path"]),
        (proxy["port_arg"], ["name", "value_template", "start_port"]),
    ]  # fmt: skip
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        target, keys = draw(st.sampled_from(targets))
        key = draw(st.one_of(st.sampled_from(keys), _KEYS))
        target[key] = draw(_VALUES)
    if draw(st.booleans()):
        del pool["server"]
    return doc


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("fuzz"))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents())
def test_random_documents_parse_or_fail_cleanly(fuzz_dir, doc):
    try:
        config = parse_config(doc, base_dir=fuzz_dir)
    except ConfigError as exc:
        assert len(str(exc).splitlines()) == 1, str(exc)
        assert str(exc).strip()
    else:
        assert isinstance(config, Config)
        assert config.pools


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab:-[]{}'\" \n\t#&*!|>%@`,?0.1sh", max_size=80))
def test_random_yaml_text_parses_or_fails_cleanly(fuzz_dir, text):
    path = os.path.join(fuzz_dir, "fuzz.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    try:
        load_config(path)
    except ConfigError as exc:
        assert len(str(exc).splitlines()) == 1, str(exc)
