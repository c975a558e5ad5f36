"""An async client for one Envoy's admin API.

Every call has a short timeout and fails with ``EnvoyAdminError`` naming the
request, except ``ready()``, which answers False while Envoy cannot be
reached: callers poll it while Envoy starts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from envoy.admin.v3 import clusters_pb2, listeners_pb2
from envoy.config.core.v3 import health_check_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from monoceros.errors import MonocerosError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 2.0

# EDS health statuses under which Envoy may pick a host; UNKNOWN leaves the
# verdict to active health checking.
_ROUTABLE_EDS = ("UNKNOWN", "HEALTHY")


_M = TypeVar("_M", bound=Message)


class EnvoyAdminError(MonocerosError):
    """An admin request failed: Envoy unreachable, slow, or said no."""


@dataclass(frozen=True)
class HostStatus:
    """One upstream host of a cluster, as Envoy's /clusters reports it."""

    address: str
    port: int
    hostname: str  # the worker id, as published in EDS
    # As published in EDS; Envoy 1.40 shows an UNKNOWN status as HEALTHY.
    eds_health_status: str
    failed_active_hc: bool
    pending_active_hc: bool  # added, first health check not passed yet
    failed_outlier_check: bool  # ejected by outlier detection
    pending_removal: bool  # removed from EDS, kept while health checks pass
    excluded: bool  # excluded after an immediate health check failure

    @property
    def draining(self) -> bool:
        return self.eds_health_status == "DRAINING"

    @property
    def healthy(self) -> bool:
        """Envoy may send this host a new request now."""
        return not (
            self.failed_active_hc
            or self.pending_active_hc
            or self.failed_outlier_check
            or self.pending_removal
            or self.excluded
            or self.eds_health_status not in _ROUTABLE_EDS
        )


@dataclass(frozen=True)
class ListenerStatus:
    name: str
    address: str
    port: int


class EnvoyAdmin:
    """Client of the admin API at ``http://host:port``.

    Use as ``async with EnvoyAdmin(host, port) as admin:``, or call
    ``close()``; the HTTP session is opened on first use, inside the loop.
    """

    def __init__(self, host: str, port: int, *, timeout: float = DEFAULT_TIMEOUT):
        self.host = host
        self.port = port
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> EnvoyAdmin:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def ready(self) -> bool:
        """True once Envoy is LIVE; False while it starts, drains or is down."""
        try:
            status, body = await self._request("GET", "/ready")
        except EnvoyAdminError as e:
            log.debug(
                "envoy admin not reachable",
                extra={"admin": self._base, "error": str(e)},
            )
            return False
        return status == 200 and body.strip() == "LIVE"

    async def server_info(self) -> dict[str, Any]:
        return await self._get_json("/server_info")

    async def config_dump(self, *, include_eds: bool = False) -> dict[str, Any]:
        path = "/config_dump?include_eds" if include_eds else "/config_dump"
        return await self._get_json(path)

    async def listeners(self) -> list[ListenerStatus]:
        """Listeners Envoy has (active, warming or draining) and their ports."""
        text = await self._get_text("/listeners?format=json")
        parsed = self._parse(text, listeners_pb2.Listeners(), "/listeners")
        result = []
        for status in parsed.listener_statuses:
            address = status.local_address.socket_address
            result.append(
                ListenerStatus(status.name, address.address, address.port_value)
            )
        return result

    async def cluster_hosts(self, cluster: str) -> list[HostStatus]:
        """The hosts of ``cluster``; empty when Envoy has no such cluster."""
        text = await self._get_text("/clusters?format=json")
        parsed = self._parse(text, clusters_pb2.Clusters(), "/clusters")
        for status in parsed.cluster_statuses:
            if status.name == cluster:
                return [_host_status(h) for h in status.host_statuses]
        return []

    async def routes_to(
        self, cluster: str, port: int, *, address: str | None = None
    ) -> bool:
        """Whether Envoy would send a new request to that host now.

        Make-before-break waits for this before the worker being replaced is
        drained: the replacement has to be in Envoy and healthy first.
        """
        for host in await self.cluster_hosts(cluster):
            if host.port == port and address in (None, host.address):
                return host.healthy
        return False

    async def drain_listeners(self, *, graceful: bool = True) -> None:
        """Start draining every listener (connections close over drain time)."""
        path = "/drain_listeners?graceful" if graceful else "/drain_listeners"
        status, body = await self._request("POST", path)
        if status != 200:
            raise EnvoyAdminError(
                f"POST {self._base}{path}: HTTP {status}: {body.strip()[:200]}"
            )

    @property
    def _base(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _get_json(self, path: str) -> dict[str, Any]:
        text = await self._get_text(path)
        try:
            return json.loads(text)
        except ValueError as e:
            raise EnvoyAdminError(f"GET {self._base}{path}: not JSON: {e}") from None

    async def _get_text(self, path: str) -> str:
        status, body = await self._request("GET", path)
        if status != 200:
            raise EnvoyAdminError(
                f"GET {self._base}{path}: HTTP {status}: {body.strip()[:200]}"
            )
        return body

    def _parse(self, text: str, message: _M, path: str) -> _M:
        try:
            return json_format.Parse(text, message, ignore_unknown_fields=True)
        except json_format.ParseError as e:
            raise EnvoyAdminError(f"GET {self._base}{path}: {e}") from None

    async def _request(self, method: str, path: str) -> tuple[int, str]:
        url = self._base + path
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout)
            )
        try:
            async with self._session.request(method, url) as response:
                return response.status, await response.text()
        except TimeoutError:
            raise EnvoyAdminError(
                f"{method} {url}: no answer within {self.timeout:g} s"
            ) from None
        except aiohttp.ClientError as e:
            raise EnvoyAdminError(f"{method} {url}: {e}") from None


def _host_status(host: clusters_pb2.HostStatus) -> HostStatus:
    health = host.health_status
    address = host.address.socket_address
    return HostStatus(
        address=address.address,
        port=address.port_value,
        hostname=host.hostname,
        eds_health_status=health_check_pb2.HealthStatus.Name(health.eds_health_status),
        failed_active_hc=health.failed_active_health_check,
        pending_active_hc=health.pending_active_hc,
        failed_outlier_check=health.failed_outlier_check,
        pending_removal=health.pending_dynamic_removal,
        excluded=health.excluded_via_immediate_hc_fail,
    )
