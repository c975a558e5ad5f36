"""Configuration: the YAML schema as plain, immutable data.

The schema is the original Go Monoceros's (``admin``, ``supervisor.workers[]``)
extended with new fields; no new field changes the meaning of an old one.
Durations are stored in seconds (float) and memory sizes in bytes (int).
This module imports nothing of the supervisor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LB_ALGORITHMS = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV")
PROTOCOLS = ("http1", "http2", "grpc")


@dataclass(frozen=True)
class AdminConfig:
    address: str = "127.0.0.1"
    port: int = 9000  # 0 binds an ephemeral port (logged at start)


@dataclass(frozen=True)
class LimitsConfig:
    lifespan: float = 0.0  # seconds; 0 disables the lifespan limit
    jitter_ratio: float = 0.0  # in [0, 1]
    memory: int = 0  # bytes of resident memory of the process tree; 0 disables
    memory_check_interval: float = 1.0  # seconds between memory polls


@dataclass(frozen=True)
class BackoffConfig:
    initial: float = 0.1  # seconds before the first crash restart
    max: float = 10.0  # cap of the exponential delay
    reset_after: float = 30.0  # a worker up this long resets its backoff


@dataclass(frozen=True)
class PortArgConfig:
    name: str
    value_template: str
    start_port: int


@dataclass(frozen=True)
class ServerConfig:
    """Proxy mode: the pool's workers sit behind an Envoy fed over xDS."""

    port_arg: PortArgConfig
    health_check_path: str
    load_balancer_algorithm: str = "ROUND_ROBIN"
    admin_port: int = 9901
    listener_address: str = "0.0.0.0"
    listener_port: int = 10000
    signal_timeout: float = 10.0
    proxy_config_path: str = "./envoy"
    protocol: str = "http1"
    # Monoceros's own probes of health_check_path: a worker that does not
    # answer 2xx within ready_timeout of its start is restarted; a READY one
    # failing unhealthy_threshold probes in a row is replaced.
    ready_timeout: float = 60.0
    health_check_interval: float = 1.0
    unhealthy_threshold: int = 3


@dataclass(frozen=True)
class PoolConfig:
    name: str
    exec: str  # as written in the file
    replicas: int = 1
    args: tuple[str, ...] = ()
    signal_timeout: float = 10.0
    max_restarts: int = 5  # crash restarts allowed per worker within restart_window
    restart_window: float = 60.0
    restart_backoff: BackoffConfig = field(default_factory=BackoffConfig)
    startup_wait_time: float = 0.0
    desired_healthy_percentage: int = 50
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    env: tuple[tuple[str, str], ...] = ()  # extra environment, in file order
    cwd: str | None = None
    server: ServerConfig | None = None
    exec_path: str = ""  # exec resolved to an absolute path at load time

    @property
    def proxy_mode(self) -> bool:
        return self.server is not None

    @property
    def index_range(self) -> int:
        """Worker indexes a pool may use: replicas, plus as many for surges.

        A replacement started before the worker it replaces stops (a recycle
        or rolling restart) takes the lowest free index, so two live
        processes never share a ``MULTIPROCESS_WORKER_ID`` or a port.
        """
        return 2 * self.replicas

    def port_range(self) -> range | None:
        if self.server is None:
            return None
        start = self.server.port_arg.start_port
        return range(start, start + self.index_range)


@dataclass(frozen=True)
class XdsTlsConfig:
    cert: str
    key: str
    client_ca: str | None = None  # verify client certificates against this CA


@dataclass(frozen=True)
class XdsConfig:
    socket: str | None = None  # Unix socket path; None: a default runtime dir
    address: str | None = None  # optional TCP "host:port"
    tls: XdsTlsConfig | None = None


@dataclass(frozen=True)
class Config:
    admin: AdminConfig = field(default_factory=AdminConfig)
    pools: tuple[PoolConfig, ...] = ()
    xds: XdsConfig = field(default_factory=XdsConfig)
    path: str | None = None  # the file it was read from

    @property
    def proxy_mode(self) -> bool:
        return any(p.proxy_mode for p in self.pools)

    def pool(self, name: str) -> PoolConfig:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)


# The loader lives in its own modules and needs the classes above; these entry
# points import it when called, so either module may be imported first, and
# callers find the data and the way to read it in one place.
def load_config(path: str) -> Config:
    """Read, validate and return the configuration file at ``path``."""
    from monoceros.config_load import load_config as load

    return load(path)


def parse_config(
    data: object, *, base_dir: str = ".", path: str | None = None
) -> Config:
    """Validate already-parsed YAML data; relative paths resolve from base_dir."""
    from monoceros.config_load import parse_config as parse

    return parse(data, base_dir=base_dir, path=path)


def check_config(config: Config) -> None:
    """The checks across pools, for a configuration changed at run time."""
    from monoceros.config_load import check_config as check

    check(config)

__all__ = [
    "LB_ALGORITHMS",
    "PROTOCOLS",
    "AdminConfig",
    "BackoffConfig",
    "Config",
    "LimitsConfig",
    "PoolConfig",
    "PortArgConfig",
    "ServerConfig",
    "XdsConfig",
    "XdsTlsConfig",
    "check_config",
    "load_config",
    "parse_config",
]
