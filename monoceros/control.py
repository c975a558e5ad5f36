"""CLI commands that talk to a running Monoceros through its admin API:
`status`, `restart POOL`, `scale POOL N` and `reload`.

They use the standard library's HTTP client: a command-line tool that
starts in a few milliseconds needs no event loop.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

from monoceros.errors import ConfigError, ExitStatus

DEFAULT_ADMIN = "127.0.0.1:9000"
READ_TIMEOUT = 10.0
CHANGE_TIMEOUT = 600.0  # a rolling restart of a large pool takes a while


class AdminUnreachable(Exception):
    pass


def register(subparsers: argparse._SubParsersAction) -> None:
    def add(name: str, help: str) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(name, help=help, description=help)
        target = parser.add_mutually_exclusive_group()
        target.add_argument(
            "--admin",
            metavar="HOST:PORT",
            help=f"the admin API of the running Monoceros (default {DEFAULT_ADMIN})",
        )
        target.add_argument(
            "-c", "--config", help="take the admin address from this configuration"
        )
        return parser

    status = add("status", "show every pool and worker of a running Monoceros")
    status.add_argument("--json", action="store_true", help="print raw JSON")
    status.set_defaults(func=_status)

    restart = add("restart", "rolling restart of one pool, make before break")
    restart.add_argument("pool")
    restart.set_defaults(func=_restart)

    scale = add("scale", "change the number of workers of one pool")
    scale.add_argument("pool")
    scale.add_argument("replicas", type=int)
    scale.set_defaults(func=_scale)

    reload = add("reload", "re-read the configuration file and apply changes")
    reload.set_defaults(func=_reload)


def _admin(args: argparse.Namespace) -> str:
    if args.admin:
        return args.admin
    if args.config:
        from monoceros.config import load_config

        config = load_config(args.config)
        host = config.admin.address
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"{host}:{config.admin.port}"
    return DEFAULT_ADMIN


def _call(args: argparse.Namespace, method: str, path: str, body=None):
    url = f"http://{_admin(args)}{path}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        timeout = READ_TIMEOUT if method == "GET" else CHANGE_TIMEOUT
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.load(exc)
        except ValueError:
            return exc.code, {"error": exc.reason}
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminUnreachable(
            f"cannot reach the admin API at {url}: {reason}"
        ) from None


def _run(func):
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except AdminUnreachable as exc:
            print(f"monoceros: {exc}", file=sys.stderr)
            return ExitStatus.STARTUP
        except ConfigError as exc:
            print(f"monoceros: invalid configuration: {exc}", file=sys.stderr)
            return ExitStatus.USAGE
        except BrokenPipeError:
            # Output piped into `head` and the like: stop quietly, and keep
            # Python from complaining again when it flushes at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return ExitStatus.OK

    return wrapper


def _failed(status: int, body: dict) -> int | None:
    if status == 200:
        return None
    print(f"monoceros: {body.get('error', status)}", file=sys.stderr)
    return ExitStatus.USAGE


@_run
def _status(args: argparse.Namespace) -> int:
    _, health = _call(args, "GET", "/health")
    status, body = _call(args, "GET", "/workers")
    if (code := _failed(status, body)) is not None:
        return code
    if args.json:
        print(json.dumps({"health": health, **body}, indent=2))
        return ExitStatus.OK
    print("POOL".ljust(16), "HEALTHY  READY/REPLICAS")
    for name, pool in health.get("pools", {}).items():
        flag = "yes" if pool["healthy"] else ("FAILED" if pool["failed"] else "no")
        print(name.ljust(16), flag.ljust(8), f"{pool['ready']}/{pool['replicas']}")
    print()
    header = ("WORKER", "PID", "PORT", "STATE", "RESTARTS", "UPTIME", "RSS", "CPU")
    rows = [header]
    for w in body["workers"]:
        rss = w.get("rss_bytes")
        rows.append((
            w["id"],
            str(w["pid"] or "-"),
            str(w["port"] or "-"),
            w["state"],
            str(w["restarts"]),
            _duration(w["uptime"]),
            f"{rss / 2**20:.1f}M" if rss else "-",
            f"{w['cpu_seconds']:.2f}s" if w.get("cpu_seconds") is not None else "-",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return ExitStatus.OK


@_run
def _restart(args: argparse.Namespace) -> int:
    status, body = _call(args, "POST", f"/pools/{args.pool}/restart")
    if (code := _failed(status, body)) is not None:
        return code
    print(f"{body['pool']}: {body['replaced']} workers replaced")
    return ExitStatus.OK


@_run
def _scale(args: argparse.Namespace) -> int:
    status, body = _call(
        args, "POST", f"/pools/{args.pool}/scale", {"replicas": args.replicas}
    )
    if (code := _failed(status, body)) is not None:
        return code
    started = ", ".join(body["started"]) or "none"
    stopped = ", ".join(body["stopped"]) or "none"
    print(f"{body['pool']}: {body['replicas']} replicas "
          f"(started: {started}; stopped: {stopped})")
    return ExitStatus.OK


@_run
def _reload(args: argparse.Namespace) -> int:
    status, body = _call(args, "POST", "/reload")
    if (code := _failed(status, body)) is not None:
        return code
    for name, what in body.get("pools", {}).items():
        print(f"{name}: {what}")
    return ExitStatus.OK


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
