"""The command line: `monoceros -c FILE` runs; subcommands inspect and control.

Exit statuses are decided here and only here (see `monoceros.errors`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from monoceros import __version__
from monoceros.errors import ConfigError, ExitStatus, MonocerosError

log = logging.getLogger("monoceros")

TCP_MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monoceros",
        description="Run, keep alive, recycle and gracefully stop pools of "
        "server workers, optionally behind an Envoy fed over xDS.",
        epilog="Commands for a running Monoceros: status, restart POOL, "
        "scale POOL N, reload, xds status, xds dump (see 'monoceros "
        "COMMAND --help').",
    )
    parser.add_argument("-c", "--config", help="path to the YAML configuration")
    parser.add_argument(
        "-d", "--debug", action="store_true", help="human-readable debug logs"
    )
    parser.add_argument(
        "-k",
        "--validate",
        action="store_true",
        help="only validate the configuration: exit 0 if valid, 2 if not",
    )
    parser.add_argument(
        "--version", action="version", version=f"monoceros {__version__}"
    )
    return parser


def _subcommand_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monoceros")
    subparsers = parser.add_subparsers(dest="command", required=True)
    try:
        from monoceros.xds import cli as xds_cli
    except ImportError:  # the xDS tools are optional for supervisor mode
        xds_cli = None
    if xds_cli is not None:
        xds_cli.register(subparsers)
    from monoceros import control

    control.register(subparsers)
    return parser


SUBCOMMANDS = ("xds", "status", "restart", "scale", "reload")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        args = _subcommand_parser().parse_args(argv)
        return int(args.func(args))
    args = _run_parser().parse_args(argv)
    if not args.config:
        print("monoceros: -c/--config is required", file=sys.stderr)
        return ExitStatus.USAGE
    return run(args.config, debug=args.debug, validate_only=args.validate)


def run(path: str, *, debug: bool = False, validate_only: bool = False) -> int:
    from monoceros.config import load_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"monoceros: invalid configuration: {exc}", file=sys.stderr)
        return ExitStatus.USAGE
    if validate_only:
        names = ", ".join(p.name for p in config.pools)
        print(f"monoceros: {path} is valid ({len(config.pools)} pools: {names})")
        return ExitStatus.OK

    from monoceros.logs import setup_logging

    output = setup_logging(debug)
    try:
        status = asyncio.run(_serve(config, output))
    except MonocerosError as exc:
        log.error(str(exc), extra={"exit_status": int(exc.exit_status)})
        status = exc.exit_status
    except Exception:
        log.exception("internal error")
        status = ExitStatus.INTERNAL
    output.close()
    return int(status)


async def _serve(config, output) -> ExitStatus:
    from monoceros.admin import AdminServer
    from monoceros.supervisor import Supervisor

    def proxy_frontend(config):
        # Imported only when a proxy pool exists: gRPC and the Envoy API
        # cost start-up time and memory that supervisor mode does not need.
        from monoceros.envoy.frontend import ProxyFrontend

        return ProxyFrontend(config)

    supervisor = Supervisor(config, output, frontend_factory=proxy_frontend)
    admin = AdminServer(supervisor, config.admin)
    await admin.start()
    supervisor.reload_hooks.append(admin.reconfigure)
    _warn_tcp_migrate_req(config)
    try:
        return await supervisor.run()
    finally:
        await admin.stop()


def _warn_tcp_migrate_req(config) -> None:
    """SO_REUSEPORT pools lose queued connections on a restart without it."""
    shared = [p.name for p in config.pools if not p.proxy_mode]
    if not shared:
        return
    try:
        with open(TCP_MIGRATE_REQ) as f:
            enabled = f.read().strip() != "0"
    except OSError:
        return  # not Linux 5.14+: nothing to tune
    if not enabled:
        log.warning(
            "net.ipv4.tcp_migrate_req is 0: when a worker sharing a port with "
            "SO_REUSEPORT stops, connections still queued on its listener are "
            "reset; set it to 1 (sysctl -w net.ipv4.tcp_migrate_req=1)",
            extra={"pools": shared},
        )


if __name__ == "__main__":
    raise SystemExit(main())
