"""Invalid configuration documents and what their error must name.

Each case is ``(case_id, yaml_text, expected_field_path_substring)``; the
texts are complete files that need nothing but ``/bin/sh`` and ``sh`` on
PATH, so the same table can drive ``monoceros -k`` on real files.
``EXPECTED_VALUES`` adds, for the cases that have one, a substring of the bad
value that the message must show.
"""

from __future__ import annotations


def _pool(*lines: str, name: str = "web", exec_: str = "/bin/sh") -> str:
    """One pool entry of ``supervisor.workers`` with extra indented lines."""
    head = [f"    - name: {name}", f"      exec: {exec_}"]
    return "\n".join(head + [f"      {line}" for line in lines]) + "\n"


def _doc(*pools: str, top: str = "") -> str:
    return top + "supervisor:\n  workers:\n" + "".join(pools)


def _proxy(start_port: int, *extra: str, replicas: int = 2) -> tuple[str, ...]:
    return (
        f"replicas: {replicas}",
        "server:",
        "  port_arg:",
        "    name: --port",
        "    value_template: '{{.Port}}'",
        f"    start_port: {start_port}",
        "  health_check_path: /health",
        *(f"  {line}" for line in extra),
    )


INVALID_CASES: list[tuple[str, str, str]] = [
    (
        "replicas_negative",
        _doc(_pool("replicas: -2")),
        "supervisor.workers[0].replicas",
    ),
    ("replicas_bool", _doc(_pool("replicas: true")), "supervisor.workers[0].replicas"),
    (
        "replicas_string",
        _doc(_pool("replicas: four")),
        "supervisor.workers[0].replicas",
    ),
    ("replicas_float", _doc(_pool("replicas: 2.5")), "supervisor.workers[0].replicas"),
    ("unknown_pool_key", _doc(_pool("replica: 3")), "supervisor.workers[0].replica"),
    (
        "unknown_top_key",
        "supervisr:\n  workers: []\n",
        "supervisr",
    ),
    ("missing_supervisor", "admin:\n  port: 9000\n", "supervisor"),
    ("missing_workers", "supervisor: {}\n", "supervisor.workers"),
    ("empty_workers", "supervisor:\n  workers: []\n", "supervisor.workers"),
    (
        "workers_mapping",
        "supervisor:\n  workers:\n    name: web\n",
        "supervisor.workers",
    ),
    ("worker_scalar", "supervisor:\n  workers:\n    - web\n", "supervisor.workers[0]"),
    (
        "missing_name",
        "supervisor:\n  workers:\n    - exec: /bin/sh\n",
        "supervisor.workers[0].name",
    ),
    ("bad_name", _doc(_pool(name="'web app'")), "supervisor.workers[0].name"),
    ("name_is_bool", _doc(_pool(name="true")), "supervisor.workers[0].name"),
    (
        "missing_exec",
        "supervisor:\n  workers:\n    - name: web\n",
        "supervisor.workers[0].exec",
    ),
    (
        "exec_missing_file",
        _doc(_pool(exec_="/nonexistent/monoceros-test-binary")),
        "supervisor.workers[0].exec",
    ),
    (
        "exec_not_on_path",
        _doc(_pool(exec_="monoceros-no-such-command")),
        "supervisor.workers[0].exec",
    ),
    ("exec_directory", _doc(_pool(exec_="/")), "supervisor.workers[0].exec"),
    ("args_null", _doc(_pool("args: [--a, null]")), "supervisor.workers[0].args[1]"),
    ("args_mapping", _doc(_pool("args: [{a: 1}]")), "supervisor.workers[0].args[0]"),
    ("args_scalar", _doc(_pool("args: --flag")), "supervisor.workers[0].args"),
    (
        "duration_without_unit",
        _doc(_pool("signal_timeout: 15")),
        "supervisor.workers[0].signal_timeout",
    ),
    (
        "duration_negative",
        _doc(_pool("signal_timeout: -5s")),
        "supervisor.workers[0].signal_timeout",
    ),
    (
        "duration_unknown_unit",
        _doc(_pool("startup_wait_time: 5x")),
        "supervisor.workers[0].startup_wait_time",
    ),
    (
        "max_restarts_negative",
        _doc(_pool("max_restarts: -1")),
        "supervisor.workers[0].max_restarts",
    ),
    (
        "restart_window_zero",
        _doc(_pool("restart_window: 0s")),
        "supervisor.workers[0].restart_window",
    ),
    (
        "backoff_max_below_initial",
        _doc(_pool("restart_backoff:", "  initial: 2s", "  max: 1s")),
        "supervisor.workers[0].restart_backoff.max",
    ),
    (
        "backoff_initial_zero",
        _doc(_pool("restart_backoff: {initial: 0}")),
        "supervisor.workers[0].restart_backoff.initial",
    ),
    (
        "healthy_percentage_over_100",
        _doc(_pool("desired_healthy_percentage: 101")),
        "supervisor.workers[0].desired_healthy_percentage",
    ),
    ("env_bad_name", _doc(_pool("env: {1BAD: x}")), "supervisor.workers[0].env"),
    (
        "env_null_value",
        _doc(_pool("env: {KEY: null}")),
        "supervisor.workers[0].env.KEY",
    ),
    ("env_list", _doc(_pool("env: [A=1]")), "supervisor.workers[0].env"),
    (
        "cwd_missing",
        _doc(_pool("cwd: /nonexistent/monoceros-dir")),
        "supervisor.workers[0].cwd",
    ),
    (
        "jitter_ratio_above_one",
        _doc(_pool("limits: {jitter_ratio: 1.5}")),
        "supervisor.workers[0].limits.jitter_ratio",
    ),
    (
        "memory_garbage",
        _doc(_pool("limits: {memory: lots}")),
        "supervisor.workers[0].limits.memory",
    ),
    (
        "memory_milli",
        _doc(_pool("limits: {memory: 500m}")),
        "supervisor.workers[0].limits.memory",
    ),
    (
        "lifespan_bool",
        _doc(_pool("limits: {lifespan: true}")),
        "supervisor.workers[0].limits.lifespan",
    ),
    (
        "memory_check_interval_zero",
        _doc(_pool("limits: {memory_check_interval: 0}")),
        "supervisor.workers[0].limits.memory_check_interval",
    ),
    (
        "limits_misspelt",
        _doc(_pool("limits: {lifespan: 4h, memroy: 1Gi}")),
        "supervisor.workers[0].limits.memroy",
    ),
    (
        "server_without_port_arg",
        _doc(_pool("server: {health_check_path: /health}")),
        "supervisor.workers[0].server.port_arg",
    ),
    (
        "template_unknown_field",
        _doc(_pool(*_proxy(20000)).replace("{{.Port}}", "{{.Foo}}")),
        "supervisor.workers[0].server.port_arg.value_template",
    ),
    (
        "template_unclosed",
        _doc(_pool(*_proxy(20000)).replace("{{.Port}}", "--port={{.Port")),
        "supervisor.workers[0].server.port_arg.value_template",
    ),
    (
        "start_port_zero",
        _doc(_pool(*_proxy(0))),
        "supervisor.workers[0].server.port_arg.start_port",
    ),
    (
        "port_range_past_65535",
        _doc(_pool(*_proxy(65530, replicas=4))),
        "supervisor.workers[0].server.port_arg.start_port",
    ),
    (
        "health_check_path_relative",
        _doc(_pool(*_proxy(20000)).replace("/health", "health")),
        "supervisor.workers[0].server.health_check_path",
    ),
    (
        "proxy_config_path_is_a_file",
        _doc(_pool(*_proxy(20000, "proxy_config_path: /etc/passwd"))),
        "supervisor.workers[0].server.proxy_config_path",
    ),
    (
        "lb_algorithm_unknown",
        _doc(_pool(*_proxy(20000, "load_balancer_algorithm: FASTEST"))),
        "supervisor.workers[0].server.load_balancer_algorithm",
    ),
    (
        "listener_address_not_ip",
        _doc(_pool(*_proxy(20000, "listener_address: example.com"))),
        "supervisor.workers[0].server.listener_address",
    ),
    (
        "protocol_unknown",
        _doc(_pool(*_proxy(20000, "protocol: http3"))),
        "supervisor.workers[0].server.protocol",
    ),
    (
        "admin_port_out_of_range",
        _doc(_pool(), top="admin:\n  port: 70000\n"),
        "admin.port",
    ),
    (
        "admin_address_empty",
        _doc(_pool(), top="admin:\n  address: ''\n"),
        "admin.address",
    ),
    (
        "duplicate_pool_names",
        _doc(_pool(), _pool("replicas: 2")),
        "supervisor.workers[1].name",
    ),
    (
        "overlapping_port_ranges",
        _doc(
            _pool(*_proxy(20000, "admin_port: 21000", "listener_port: 21001")),
            _pool(
                *_proxy(20002, "admin_port: 21002", "listener_port: 21003"),
                name="api",
            ),
        ),
        "supervisor.workers[1].server.port_arg.start_port",
    ),
    (
        "admin_port_in_worker_ports",
        _doc(_pool(*_proxy(9000)), top="admin:\n  port: 9001\n"),
        "admin.port",
    ),
    (
        "listener_port_equals_admin_port",
        _doc(_pool(*_proxy(20000, "listener_port: 9000"))),
        "supervisor.workers[0].server.listener_port",
    ),
    (
        "xds_port_in_worker_ports",
        _doc(_pool(*_proxy(20000)), top="xds:\n  address: 127.0.0.1:20003\n"),
        "xds.address",
    ),
    (
        "xds_tls_without_address",
        _doc(_pool(), top="xds:\n  tls: {cert: /etc/hostname, key: /etc/hostname}\n"),
        "xds.tls",
    ),
    (
        "xds_tls_missing_file",
        _doc(
            _pool(),
            top="xds:\n  address: 127.0.0.1:18000\n"
            "  tls: {cert: /nonexistent/cert.pem, key: /nonexistent/key.pem}\n",
        ),
        "xds.tls.cert",
    ),
    (
        "xds_address_without_port",
        _doc(_pool(), top="xds:\n  address: localhost\n"),
        "xds.address",
    ),
    (
        "xds_socket_too_long",
        _doc(_pool(), top=f"xds:\n  socket: /tmp/{'s' * 120}.sock\n"),
        "xds.socket",
    ),
    (
        "yaml_syntax_error",
        "supervisor:\n  workers:\n    - name: web\n      exec: sh: -c\n",
        "invalid YAML",
    ),
    (
        "yaml_duplicate_key",
        _doc(_pool("replicas: 2", "replicas: 3")),
        "duplicate key 'replicas'",
    ),
    ("top_level_list", "- supervisor\n", "top level"),
    ("empty_document", "# nothing here\n", "empty"),
    ("non_string_key", _doc(_pool("1: x")), "supervisor.workers[0]"),
]

EXPECTED_VALUES: dict[str, str] = {
    "replicas_negative": "-2",
    "replicas_bool": "boolean true",
    "replicas_string": "string 'four'",
    "replicas_float": "2.5",
    "unknown_pool_key": "did you mean 'replicas'?",
    "unknown_top_key": "did you mean 'supervisor'?",
    "workers_mapping": "mapping",
    "worker_scalar": "string 'web'",
    "bad_name": "'web app'",
    "name_is_bool": "boolean true",
    "exec_missing_file": "'/nonexistent/monoceros-test-binary'",
    "exec_not_on_path": "'monoceros-no-such-command'",
    "exec_directory": "is a directory",
    "args_null": "null",
    "args_mapping": "mapping",
    "args_scalar": "string '--flag'",
    "duration_without_unit": "15",
    "duration_negative": "'-5s'",
    "duration_unknown_unit": "'5x'",
    "max_restarts_negative": "-1",
    "restart_window_zero": "'0s'",
    "backoff_max_below_initial": "'1s'",
    "healthy_percentage_over_100": "101",
    "env_bad_name": "'1BAD'",
    "env_list": "list",
    "cwd_missing": "/nonexistent/monoceros-dir",
    "jitter_ratio_above_one": "1.5",
    "memory_garbage": "'lots'",
    "memory_milli": "'500m'",
    "lifespan_bool": "boolean true",
    "limits_misspelt": "did you mean 'memory'?",
    "template_unknown_field": "'.Foo'",
    "start_port_zero": "0",
    "port_range_past_65535": "65537",
    "health_check_path_relative": "'health'",
    "lb_algorithm_unknown": "'FASTEST'",
    "listener_address_not_ip": "'example.com'",
    "protocol_unknown": "'http3'",
    "admin_port_out_of_range": "70000",
    "duplicate_pool_names": "supervisor.workers[0].name",
    "overlapping_port_ranges": "supervisor.workers[0]",
    "admin_port_in_worker_ports": "supervisor.workers[0].server.port_arg.start_port",
    "listener_port_equals_admin_port": "admin.port",
    "xds_port_in_worker_ports": "20003",
    "xds_tls_missing_file": "/nonexistent/cert.pem",
    "xds_address_without_port": "'localhost'",
    "yaml_syntax_error": ":4:15: invalid YAML: mapping values are not allowed",
    "top_level_list": "list",
    "non_string_key": "integer 1",
}
