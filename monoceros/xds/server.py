"""The xDS gRPC server: ADS, CSDS, introspection, health and reflection."""

from __future__ import annotations

import logging
import os

import grpc
from envoy.service.discovery.v3 import ads_pb2, ads_pb2_grpc
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from monoceros.errors import StartupError
from monoceros.xds import transport
from monoceros.xds.ads import AdsService
from monoceros.xds.cache import SnapshotCache
from monoceros.xds.csds import CsdsService
from monoceros.xds.introspection import SERVICE as INTROSPECTION
from monoceros.xds.introspection import IntrospectionService
from monoceros.xds.metrics import XdsMetrics
from monoceros.xds.transport import SocketLock, TlsFiles

log = logging.getLogger(__name__)

ADS = ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"].full_name
CSDS = csds_pb2.DESCRIPTOR.services_by_name["ClientStatusDiscoveryService"].full_name

_OPTIONS = [
    # A 1,000-endpoint CLA is ~50 kB; many clusters in one response add up.
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # Envoy pings on its own schedule; let it, without GOAWAY for "too many".
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class XdsServer:
    """Serves a ``SnapshotCache`` over a Unix socket and/or TCP.

    At least one of ``unix_socket`` and ``tcp_address`` is required.
    ``tcp_address`` is ``HOST:PORT`` (``:PORT`` binds 127.0.0.1; port 0 an
    ephemeral port, read back from ``tcp_port``). With ``tls``, TCP is
    served over TLS, and with ``tls.client_ca`` every client must present a
    certificate signed by that CA. The Unix socket is not TLS: its 0600 mode
    is its protection.
    """

    def __init__(
        self,
        cache: SnapshotCache,
        *,
        unix_socket: str | None,
        tcp_address: str | None = None,
        tls: TlsFiles | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if not unix_socket and not tcp_address:
            raise ValueError("XdsServer needs a unix_socket or a tcp_address")
        self.cache = cache
        self.unix_socket = unix_socket
        self.tcp_address = tcp_address
        self.tls = tls
        self.tcp_port: int | None = None
        self.metrics = XdsMetrics(registry)
        self.ads = AdsService(cache, self.metrics)
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._lock: SocketLock | None = None

    async def start(self) -> None:
        """Bind and serve; raises ``StartupError`` naming what went wrong."""
        server = grpc.aio.server(options=_OPTIONS)
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self.ads, server)
        csds_pb2_grpc.add_ClientStatusDiscoveryServiceServicer_to_server(
            CsdsService(self.ads), server
        )
        server.add_generic_rpc_handlers((IntrospectionService(self.ads).handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = (ADS, CSDS, INTROSPECTION, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)

        try:
            if self.unix_socket:
                self._bind_unix(server, self.unix_socket)
            if self.tcp_address:
                self._bind_tcp(server, self.tcp_address)
            await server.start()
        except BaseException:
            await server.stop(None)
            self._release()
            raise
        self._server = server

        for name in ("", ADS, CSDS):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "xDS server listening",
            extra={"socket": self.unix_socket, "address": self.tcp_address,
                   "port": self.tcp_port, "tls": self.tls is not None,
                   "boot_id": self.cache.boot_id},
        )

    async def stop(self, grace: float = 1.0) -> None:
        """Stop serving: open streams get ``grace`` seconds, then are cut."""
        if self._server is None:
            return
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
        self._server = None
        self._release()
        log.info("xDS server stopped", extra={"socket": self.unix_socket})

    def _bind_unix(self, server: grpc.aio.Server, path: str) -> None:
        self._lock = SocketLock(path)
        self._lock.acquire()
        with transport.private_umask():
            bound = server.add_insecure_port(f"unix:{path}")
        if not bound:
            raise StartupError(f"cannot listen on xDS socket {path}")
        os.chmod(path, 0o600)

    def _bind_tcp(self, server: grpc.aio.Server, address: str) -> None:
        try:
            host, port = transport.parse_address(address)
        except ValueError as exc:
            raise StartupError(str(exc)) from exc
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

        try:
            if self.tls is None:
                self.tcp_port = server.add_insecure_port(target)
            else:
                cert, key, client_ca = transport.read_tls(self.tls)
                credentials = grpc.ssl_server_credentials(
                    [(key, cert)],
                    root_certificates=client_ca,
                    require_client_auth=client_ca is not None,
                )
                self.tcp_port = server.add_secure_port(target, credentials)
        except RuntimeError as exc:
            # grpcio reports a failed bind as RuntimeError with no reason.
            raise StartupError(f"cannot listen on xDS address {address}: "
                               f"in use or not local") from exc
        if not self.tcp_port:
            raise StartupError(f"cannot listen on xDS address {address}")

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
