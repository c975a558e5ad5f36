"""``monoceros xds status`` and ``monoceros xds dump``: look into a live server.

``status`` reads Monoceros's own introspection service (per stream, per
type: versions sent and ACKed, the last NACK); ``dump`` reads the standard
CSDS, so what it prints is what any CSDS client would see.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import importlib
import json
import sys
from collections.abc import Callable

import grpc
import yaml
from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from monoceros.errors import ExitStatus, MonocerosError
from monoceros.xds import transport, types
from monoceros.xds.introspection import list_streams_stub
from monoceros.xds.v1 import introspection_pb2 as pb

TIMEOUT = 5.0

# Messages a dump may meet inside resources (typed_config and the like).
# Their modules must be imported for JSON output to name their fields.
_EXTENSIONS = (
    "envoy.config.cluster.v3.cluster_pb2",
    "envoy.config.endpoint.v3.endpoint_pb2",
    "envoy.config.listener.v3.listener_pb2",
    "envoy.config.route.v3.route_pb2",
    "envoy.extensions.filters.network.http_connection_manager.v3"
    ".http_connection_manager_pb2",
    "envoy.extensions.filters.http.router.v3.router_pb2",
    "envoy.extensions.filters.http.health_check.v3.health_check_pb2",
    "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2",
    "envoy.extensions.access_loggers.stream.v3.stream_pb2",
    "envoy.extensions.access_loggers.file.v3.file_pb2",
    "envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``xds status`` and ``xds dump`` to a command line."""
    xds = subparsers.add_parser("xds", help="inspect the xDS server")
    commands = xds.add_subparsers(dest="xds_command", metavar="COMMAND")
    commands.required = True

    status = commands.add_parser(
        "status", help="per node and type: versions sent and ACKed, last NACK"
    )
    _server_argument(status)
    status.add_argument("--node", help="only this node id")
    status.set_defaults(func=_runner(_status))

    dump = commands.add_parser("dump", help="the resources each node is served")
    _server_argument(dump)
    dump.add_argument("--node", help="only this node id")
    dump.add_argument("--format", choices=("yaml", "json"), default="yaml")
    dump.set_defaults(func=_runner(_dump))


def _server_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        metavar="unix:PATH|HOST:PORT",
        help="the xDS server (default: unix: and the default socket path)",
    )


def target_of(server: str | None) -> str:
    """A gRPC target from ``--server``; raises ``ValueError`` if malformed."""
    if not server:
        return f"unix:{transport.default_socket_path()}"
    if server.startswith("unix:"):
        if not server[5:]:
            raise ValueError("--server unix: needs a path")
        return server
    host, port = transport.parse_address(server)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _runner(command: Callable) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            target = target_of(args.server)
        except (ValueError, MonocerosError) as exc:
            print(f"monoceros xds: {exc}", file=sys.stderr)
            return ExitStatus.USAGE
        try:
            return asyncio.run(command(target, args))
        except grpc.aio.AioRpcError as exc:
            print(
                f"monoceros xds: cannot query the xDS server at {target}: "
                f"{exc.code().name.lower()}: {exc.details()}",
                file=sys.stderr,
            )
            return ExitStatus.STARTUP
        except BrokenPipeError:
            return ExitStatus.OK

    return run


async def _status(target: str, args: argparse.Namespace) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = list_streams_stub(channel)
        request = pb.ListStreamsRequest(node_id=args.node or "")
        response = await stub(request, timeout=TIMEOUT, wait_for_ready=False)

    rows = [("NODE", "TYPE", "VERSION SENT", "VERSION ACKED", "LAST NACK",
             "CONNECTED SINCE")]
    for stream in sorted(response.streams, key=lambda s: (s.node_id, s.stream_id)):
        since = _time(stream.connected_since.ToDatetime(datetime.UTC))
        for typed in sorted(stream.types, key=lambda t: _order(t.type_url)):
            sent = typed.version_sent or "-"
            if typed.waiting_for_ack:
                sent += " (waiting)"
            rows.append((
                f"{stream.node_id} ({stream.variant})",
                types.short_name(typed.type_url).upper(),
                sent,
                typed.version_acked or "-",
                _nack(typed.last_nack) if typed.HasField("last_nack") else "-",
                since,
            ))
    if len(rows) == 1:
        print("no Envoy is connected")
        return ExitStatus.OK
    _print_table(rows)
    return ExitStatus.OK


async def _dump(target: str, args: argparse.Namespace) -> int:
    request = csds_pb2.ClientStatusRequest()
    if args.node:
        request.node_matchers.add().node_id.exact = args.node
    async with grpc.aio.insecure_channel(target) as channel:
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        response = await stub.FetchClientStatus(request, timeout=TIMEOUT)

    nodes = [_client_dump(config) for config in response.config]
    if args.format == "json":
        json.dump(nodes, sys.stdout, indent=2)
        print()
    else:
        yaml.safe_dump(nodes, sys.stdout, sort_keys=False)
    return ExitStatus.OK


def _client_dump(config: Message) -> dict:
    _load_extensions()
    resources: dict[str, list] = {}
    for entry in config.generic_xds_configs:
        if not entry.HasField("xds_config"):
            continue
        key = types.short_name(entry.type_url)
        resources.setdefault(key, []).append({
            "name": entry.name,
            "version": entry.version_info,
            "status": _status_name(entry),
            "resource": _as_dict(entry.xds_config),
        })
    return {"node": config.node.id, "cluster": config.node.cluster,
            "resources": resources}


def _as_dict(body: Message) -> dict:
    try:
        # Through JSON text: MessageToDict may hand back OrderedDicts,
        # which yaml.safe_dump refuses.
        return json.loads(json_format.MessageToJson(body))
    except (TypeError, KeyError):
        # A message type this command does not know: show it undecoded.
        return {"@type": body.type_url,
                "value": base64.b64encode(body.value).decode()}


def _load_extensions() -> None:
    for module in _EXTENSIONS:
        try:
            importlib.import_module(module)
        except ImportError:
            pass


def _status_name(entry: Message) -> str:
    return dump_pb2.ClientResourceStatus.Name(entry.client_status)


def _order(type_url: str) -> int:
    return types.ORDER.index(type_url) if type_url in types.ORDER else len(types.ORDER)


def _nack(nack: Message) -> str:
    message = nack.message.strip().splitlines()[0] if nack.message.strip() else ""
    if len(message) > 60:
        message = message[:57] + "..."
    return f"{nack.version} at {_time(nack.at.ToDatetime(datetime.UTC))}: {message}"


def _time(moment: datetime.datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
