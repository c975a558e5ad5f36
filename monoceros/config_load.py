"""Loading the configuration: YAML in, a validated ``Config`` out.

Validation stops at the first problem and reports it as one ``ConfigError``
whose text is a single line: the field path (``supervisor.workers[0].replicas``),
what was expected and the value found. Unknown keys are errors, with the
closest known key suggested, because a misspelt optional field would
otherwise fall back to its default without a word.

Paths in the file (``exec``, ``cwd``, ``proxy_config_path``, ``xds.socket``,
the TLS files) are resolved against the configuration file's directory and
stored absolute, so nothing depends on the directory Monoceros starts in.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import re
from typing import Any

import yaml

from monoceros.config import (
    LB_ALGORITHMS,
    PROTOCOLS,
    AdminConfig,
    BackoffConfig,
    Config,
    LimitsConfig,
    PoolConfig,
    PortArgConfig,
    ServerConfig,
    XdsConfig,
    XdsTlsConfig,
)
from monoceros.config_fields import Fields, describe, one_line, scalar_text, show
from monoceros.config_yaml import Loader
from monoceros.errors import ConfigError
from monoceros.units import (
    format_duration,
    validate_port_template,
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_NAME_MAX = 63
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PORT = re.compile(r"[0-9]{1,5}")
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes on Linux, one for the NUL

_TOP_KEYS = ("admin", "xds", "supervisor")
_ADMIN_KEYS = ("address", "port")
_XDS_KEYS = ("socket", "address", "tls")
_TLS_KEYS = ("cert", "key", "client_ca")
_POOL_KEYS = (
    "name",
    "replicas",
    "exec",
    "args",
    "signal_timeout",
    "max_restarts",
    "restart_window",
    "restart_backoff",
    "startup_wait_time",
    "desired_healthy_percentage",
    "env",
    "cwd",
    "limits",
    "server",
)
_BACKOFF_KEYS = ("initial", "max", "reset_after")
_LIMITS_KEYS = ("lifespan", "jitter_ratio", "memory", "memory_check_interval")
_SERVER_KEYS = (
    "port_arg",
    "health_check_path",
    "load_balancer_algorithm",
    "admin_port",
    "listener_address",
    "listener_port",
    "signal_timeout",
    "proxy_config_path",
    "protocol",
    "ready_timeout",
    "health_check_interval",
    "unhealthy_threshold",
)
_PORT_ARG_KEYS = ("name", "value_template", "start_port")


def load_config(path: str) -> Config:
    """Read, validate and return the configuration file at ``path``."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise ConfigError("", f"cannot read {show(path)}: {reason}") from None

    data = _parse_yaml(raw, path)
    absolute = os.path.abspath(path)
    return parse_config(data, base_dir=os.path.dirname(absolute), path=absolute)


def _parse_yaml(raw: bytes, path: str) -> object:
    try:
        return yaml.load(raw, Loader=Loader)  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError("", one_line(f"{where}: invalid YAML: {problem}")) from None
    except yaml.YAMLError as exc:  # a ReaderError: bytes that are not text
        raise ConfigError("", one_line(f"{path}: invalid YAML: {exc}")) from None
    except RecursionError:
        raise ConfigError("", f"{path}: invalid YAML: nested too deeply") from None


def parse_config(
    data: object, *, base_dir: str = ".", path: str | None = None
) -> Config:
    """Validate already-parsed YAML data; relative paths resolve from base_dir."""
    base_dir = os.path.abspath(base_dir)
    if data is None:
        raise ConfigError("", "the configuration is empty; it needs supervisor.workers")
    if not isinstance(data, dict):
        raise ConfigError(
            "", f"expected a mapping at the top level, got {describe(data)}"
        )

    top = Fields(data, "", _TOP_KEYS)
    admin = _admin(top.section("admin", _ADMIN_KEYS))
    xds = _xds(top.section("xds", _XDS_KEYS), base_dir)
    supervisor = top.section("supervisor", ("workers",), required=True)
    workers = supervisor.list("workers", required=True)
    if not workers:
        raise ConfigError(supervisor.at("workers"), "must list at least one pool")

    pools = tuple(
        _pool(Fields.of(item, f"supervisor.workers[{i}]", _POOL_KEYS), base_dir)
        for i, item in enumerate(workers)
    )
    config = Config(admin=admin, pools=pools, xds=xds, path=path)
    _check_names(config)
    _check_ports(config)
    return config


def _default(cls: type, name: str) -> Any:
    """A dataclass field's default: the dataclasses stay the one source."""
    spec = cls.__dataclass_fields__[name]
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


_pool_default = functools.partial(_default, PoolConfig)
_server_default = functools.partial(_default, ServerConfig)


def _admin(m: Fields) -> AdminConfig:
    address = m.text("address", _default(AdminConfig, "address"))
    if any(c.isspace() for c in address) or "/" in address:
        raise m.error("address", f"expected a host or IP address, got {show(address)}")
    return AdminConfig(
        address=address,
        port=m.port("port", _default(AdminConfig, "port"), low=0),
    )


def _xds(m: Fields, base_dir: str) -> XdsConfig:
    socket = m.file_path("socket", base_dir)
    if socket is not None and len(os.fsencode(socket)) > _SOCKET_PATH_MAX:
        raise m.error(
            "socket",
            f"{show(socket)} is {len(os.fsencode(socket))} bytes long; a Unix "
            f"socket path holds at most {_SOCKET_PATH_MAX}",
        )

    address = m.text("address")
    if address is not None:
        _split_host_port(m, "address", address)

    tls = None
    if m.get("tls") is not None:
        if address is None:
            raise m.error("tls", "needs xds.address: TLS applies to the TCP listener")
        tls = _tls(m.section("tls", _TLS_KEYS), base_dir)
    return XdsConfig(socket=socket, address=address, tls=tls)


def _split_host_port(m: Fields, key: str, address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
        raise m.error(
            key, f"expected host:port with a port from 1 to 65535, got {show(address)}"
        )
    return host, int(port)


def _tls(m: Fields, base_dir: str) -> XdsTlsConfig:
    paths = {}
    for key in _TLS_KEYS:
        path = m.file_path(key, base_dir, required=key != "client_ca")
        if path is not None and not os.path.isfile(path):
            raise m.error(key, f"no such file {show(path)}")
        paths[key] = path
    return XdsTlsConfig(**paths)


def _pool(m: Fields, base_dir: str) -> PoolConfig:
    name = m.text("name", required=True)
    if not _NAME.fullmatch(name) or len(name) > _NAME_MAX:
        raise m.error(
            "name",
            f"must be 1 to {_NAME_MAX} characters of letters, digits, '_', '.' "
            f"and '-', starting with a letter or digit, got {show(name)}",
        )
    replicas = m.integer("replicas", _default(PoolConfig, "replicas"), 1)
    env = _env(m)
    cwd = _cwd(m, base_dir)
    exec_text = m.text("exec", required=True)
    exec_path = _resolve_exec(m, exec_text, cwd or base_dir, dict(env))

    server = _server(m, base_dir, replicas)
    return PoolConfig(
        name=name,
        exec=exec_text,
        replicas=replicas,
        args=_args(m),
        signal_timeout=_signal_timeout(m, _pool_default("signal_timeout")),
        max_restarts=m.integer("max_restarts", _pool_default("max_restarts"), 0),
        restart_window=m.duration(
            "restart_window", _pool_default("restart_window"), positive=True
        ),
        restart_backoff=_backoff(m.section("restart_backoff", _BACKOFF_KEYS)),
        startup_wait_time=m.duration(
            "startup_wait_time", _pool_default("startup_wait_time")
        ),
        desired_healthy_percentage=m.integer(
            "desired_healthy_percentage",
            _pool_default("desired_healthy_percentage"),
            0,
            100,
        ),
        limits=_limits(m.section("limits", _LIMITS_KEYS)),
        env=env,
        cwd=cwd,
        server=server,
        exec_path=exec_path,
    )


def _signal_timeout(m: Fields, default: float) -> float:
    # The original treats a zero signal_timeout as "use the default"; a zero
    # here must not quietly become "SIGKILL at once" instead.
    return m.duration("signal_timeout", default) or default


def _args(m: Fields) -> tuple[str, ...]:
    args = []
    for i, value in enumerate(m.list("args")):
        args.append(scalar_text(f"{m.at('args')}[{i}]", value))
    return tuple(args)


def _env(m: Fields) -> tuple[tuple[str, str], ...]:
    value = m.get("env")
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise m.error("env", f"expected a mapping, got {describe(value)}")

    env = Fields(value, m.at("env"), [k for k in value if isinstance(k, str)])
    pairs = []
    for key, item in value.items():
        if not _ENV_KEY.fullmatch(key):
            raise env.error(
                key,
                "environment variable names are letters, digits and '_', not "
                f"starting with a digit, got {show(key)}",
            )
        pairs.append((key, scalar_text(env.at(key), item)))
    return tuple(pairs)


def _cwd(m: Fields, base_dir: str) -> str | None:
    cwd = m.file_path("cwd", base_dir)
    if cwd is not None and not os.path.isdir(cwd):
        raise m.error("cwd", f"no such directory {show(cwd)}")
    return cwd


def _resolve_exec(m: Fields, exec_text: str, cwd: str, env: dict[str, str]) -> str:
    """Find the executable as a shell would, from the pool's directory."""
    if "/" in exec_text:
        path = os.path.normpath(os.path.join(cwd, exec_text))
        shown = show(exec_text) if path == exec_text else f"{show(exec_text)} ({path})"
        if not os.path.exists(path):
            raise m.error("exec", f"{shown} does not exist")
        if os.path.isdir(path):
            raise m.error("exec", f"{shown} is a directory")
        if not os.access(path, os.X_OK):
            raise m.error("exec", f"{shown} is not executable")
        return path

    search = env.get("PATH", os.environ.get("PATH", os.defpath))
    for directory in search.split(os.pathsep):
        path = os.path.join(cwd, directory or ".", exec_text)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.normpath(path)
    where = "the pool's env PATH" if "PATH" in env else "PATH"
    raise m.error("exec", f"{show(exec_text)} was not found on {where}")


def _backoff(m: Fields) -> BackoffConfig:
    initial = m.duration("initial", _default(BackoffConfig, "initial"), positive=True)
    maximum = m.duration("max", _default(BackoffConfig, "max"), positive=True)
    if maximum < initial:
        raise m.error(
            "max",
            f"must be >= initial ({format_duration(initial)}), "
            f"got {show(m.get('max'))}",
        )
    reset_after = m.duration("reset_after", _default(BackoffConfig, "reset_after"))
    return BackoffConfig(initial=initial, max=maximum, reset_after=reset_after)


def _limits(m: Fields) -> LimitsConfig:
    return LimitsConfig(
        lifespan=m.duration("lifespan", _default(LimitsConfig, "lifespan")),
        jitter_ratio=m.ratio("jitter_ratio", _default(LimitsConfig, "jitter_ratio")),
        memory=m.size("memory", _default(LimitsConfig, "memory")),
        memory_check_interval=m.duration(
            "memory_check_interval",
            _default(LimitsConfig, "memory_check_interval"),
            positive=True,
        ),
    )


def _server(pool: Fields, base_dir: str, replicas: int) -> ServerConfig | None:
    if pool.get("server") is None:
        return None
    m = pool.section("server", _SERVER_KEYS)
    port_arg = _port_arg(m.section("port_arg", _PORT_ARG_KEYS, required=True))
    last_port = port_arg.start_port + 2 * replicas - 1
    if last_port > 65535:
        raise ConfigError(
            f"{m.path}.port_arg.start_port",
            f"a pool of {replicas} replicas uses {2 * replicas} ports (one spare "
            f"per worker, for recycling) from start_port {port_arg.start_port}, "
            f"up to {last_port}, past 65535",
        )

    health_check_path = m.text("health_check_path", required=True)
    if not health_check_path.startswith("/") or any(
        c.isspace() for c in health_check_path
    ):
        raise m.error(
            "health_check_path",
            f"must be a URL path starting with '/', got {show(health_check_path)}",
        )

    listener_address = m.text("listener_address", _server_default("listener_address"))
    try:
        ipaddress.ip_address(listener_address)
    except ValueError:
        raise m.error(
            "listener_address", f"expected an IP address, got {show(listener_address)}"
        ) from None

    proxy_config_path = m.file_path("proxy_config_path", base_dir)
    if proxy_config_path is None:
        default_path = _server_default("proxy_config_path")
        proxy_config_path = os.path.normpath(os.path.join(base_dir, default_path))
    if os.path.exists(proxy_config_path) and not os.path.isdir(proxy_config_path):
        raise m.error(
            "proxy_config_path",
            f"must be a directory (it is created if missing), got the file "
            f"{show(proxy_config_path)}",
        )

    return ServerConfig(
        port_arg=port_arg,
        health_check_path=health_check_path,
        load_balancer_algorithm=m.choice(
            "load_balancer_algorithm",
            _server_default("load_balancer_algorithm"),
            LB_ALGORITHMS,
        ),
        admin_port=m.port("admin_port", _server_default("admin_port")),
        listener_address=listener_address,
        listener_port=m.port("listener_port", _server_default("listener_port")),
        signal_timeout=_signal_timeout(m, _server_default("signal_timeout")),
        proxy_config_path=proxy_config_path,
        protocol=m.choice("protocol", _server_default("protocol"), PROTOCOLS),
        ready_timeout=m.duration(
            "ready_timeout", _server_default("ready_timeout"), positive=True
        ),
        health_check_interval=m.duration(
            "health_check_interval",
            _server_default("health_check_interval"),
            positive=True,
        ),
        unhealthy_threshold=m.integer(
            "unhealthy_threshold", _server_default("unhealthy_threshold"), 1
        ),
    )


def _port_arg(m: Fields) -> PortArgConfig:
    name = m.text("name", required=True)
    template = m.text("value_template", required=True)
    try:
        validate_port_template(template)
    except ValueError as exc:
        raise m.error("value_template", str(exc)) from None

    if m.get("start_port") is None:
        raise m.error("start_port", "required field is missing")
    start_port = m.port("start_port", 0)
    return PortArgConfig(name=name, value_template=template, start_port=start_port)


def check_config(config: Config) -> None:
    """The checks across pools, for a configuration changed at run time
    (a pool scaled through the admin API, say)."""
    for i, pool in enumerate(config.pools):
        span = pool.port_range()
        if span is not None and span.stop - 1 > 65535:
            raise ConfigError(
                f"supervisor.workers[{i}].replicas",
                f"a pool of {pool.replicas} replicas uses {2 * pool.replicas} "
                f"ports from start_port {span.start}, up to {span.stop - 1}, "
                "past 65535",
            )
    _check_names(config)
    _check_ports(config)


def _check_names(config: Config) -> None:
    first: dict[str, int] = {}
    for i, pool in enumerate(config.pools):
        j = first.setdefault(pool.name, i)
        if j != i:
            raise ConfigError(
                f"supervisor.workers[{i}].name",
                f"duplicate pool name {show(pool.name)}, already used by "
                f"supervisor.workers[{j}].name",
            )


def _check_ports(config: Config) -> None:
    """No two listeners of one configuration may want the same port."""
    ranges = []
    for i, pool in enumerate(config.pools):
        span = pool.port_range()
        if span is None:
            continue
        field = f"supervisor.workers[{i}].server.port_arg.start_port"
        for other_field, other in ranges:
            if span.start < other.stop and other.start < span.stop:
                raise ConfigError(
                    field,
                    f"worker ports {_span(span)} overlap {_span(other)} of "
                    f"{other_field}",
                )
        ranges.append((field, span))

    fixed = _fixed_ports(config)
    for k, (field, port) in enumerate(fixed):
        for range_field, span in ranges:
            if port in span:
                raise ConfigError(
                    field,
                    f"port {port} falls in worker ports {_span(span)} of {range_field}",
                )
        for other_field, other_port in fixed[:k]:
            if port == other_port:
                raise ConfigError(
                    field, f"port {port} is already used by {other_field}"
                )


def _fixed_ports(config: Config) -> list[tuple[str, int]]:
    fixed = []
    if config.admin.port:
        fixed.append(("admin.port", config.admin.port))
    if config.xds.address is not None:
        fixed.append(("xds.address", int(config.xds.address.rpartition(":")[2])))
    for i, pool in enumerate(config.pools):
        if pool.server is not None:
            prefix = f"supervisor.workers[{i}].server"
            fixed.append((f"{prefix}.admin_port", pool.server.admin_port))
            fixed.append((f"{prefix}.listener_port", pool.server.listener_port))
    return fixed


def _span(span: range) -> str:
    return f"{span.start}-{span.stop - 1}"
