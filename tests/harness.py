"""Run the real `monoceros` command in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from tests.conftest import free_port, free_port_range, wait_for_sync

PROCESSBIN = [sys.executable, "-m", "monoceros.processbin"]


def venv_env() -> dict[str, str]:
    """The environment with this Python's scripts directory first on PATH,
    as an activated virtual environment (or `make`) has it."""
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}


def processbin_exec() -> str:
    """The processbin console script next to this Python (it is on PATH in
    the venv, but tests must not depend on PATH)."""
    return str(Path(sys.executable).with_name("monoceros-processbin"))


def plain_pool(name: str = "pb", replicas: int = 2, args=(), **pool) -> dict:
    """A supervisor-mode pool of processbin workers, as YAML data."""
    return {
        "name": name,
        "replicas": replicas,
        "exec": processbin_exec(),
        "args": list(args),
        "signal_timeout": "2s",
        **pool,
    }


def proxy_pool(name: str = "web", replicas: int = 4, args=(), **pool) -> dict:
    """A proxy-mode pool of processbin workers on free ports, as YAML data;
    `server={...}` overrides fields of its server section."""
    server = pool.pop("server", {})
    return {
        "name": name,
        "replicas": replicas,
        "exec": processbin_exec(),
        "args": ["--log-interval", "0", "--log-count", "1", *args],
        "signal_timeout": "5s",
        **pool,
        "server": {
            "port_arg": {
                "name": "--port",
                "value_template": "{{.Port}}",
                "start_port": free_port_range(2 * replicas),
            },
            "health_check_path": "/health",
            "admin_port": free_port(),
            "listener_port": free_port(),
            "listener_address": "127.0.0.1",
            "signal_timeout": "5s",
            **server,
        },
    }


def url(pool: dict, path: str = "/") -> str:
    """Where a proxy-mode pool's Envoy listens."""
    return f"http://127.0.0.1:{pool['server']['listener_port']}{path}"


class Monoceros:
    """One `monoceros -c` process.

    `admin_port` reuses a given port (a restart on the same ports);
    `launcher` replaces `python -m monoceros` (e.g. a wrapper that audits
    the signals Monoceros sends); `name` keeps several runs' files apart
    in one directory.
    """

    def __init__(
        self,
        tmp_path: Path,
        config: dict,
        debug: bool = False,
        *,
        admin_port: int | None = None,
        launcher: list[str] | None = None,
        name: str = "",
    ):
        self.tmp_path = tmp_path
        self.admin_port = admin_port or free_port()
        config.setdefault("admin", {})["port"] = self.admin_port
        self.config_path = tmp_path / f"monoceros{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.stdout_path = tmp_path / f"stdout{name}.log"
        self.stderr_path = tmp_path / f"stderr{name}.log"
        launcher = launcher or [sys.executable, "-m", "monoceros"]
        argv = [*launcher, "-c", str(self.config_path)]
        if debug:
            argv.append("-d")
        self.proc = subprocess.Popen(
            argv,
            stdout=self.stdout_path.open("wb"),
            stderr=self.stderr_path.open("wb"),
            start_new_session=True,
            env=venv_env(),
        )

    def get(self, path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def post(self, path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        req = urllib.request.Request(url, method="POST", data=b"")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def try_get(self, path: str) -> tuple[int, bytes] | None:
        try:
            return self.get(path)
        except (OSError, urllib.error.URLError):
            return None

    def workers(self) -> list[dict]:
        answer = self.try_get("/workers")
        if answer is None or answer[0] != 200:
            return []
        return json.loads(answer[1])["workers"]

    def ready_workers(self, pool: str | None = None) -> list[dict]:
        return [
            w
            for w in self.workers()
            if w["state"] == "ready" and (pool is None or w["pool"] == pool)
        ]

    def wait_ready(self, count: int, timeout: float = 15.0) -> list[dict]:
        return wait_for_sync(
            lambda: (ws := self.ready_workers()) and len(ws) >= count and ws,
            timeout=timeout,
        )

    def metric(self, name: str, **labels: str) -> float | None:
        answer = self.try_get("/metrics")
        if answer is None:
            return None
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in answer[1].decode().splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == name and not labels:
                return float(value)
            if key.startswith(name + "{"):
                got = ",".join(sorted(key[len(name) + 1 : -1].split(",")))
                if got == want:
                    return float(value)
        return None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stdout(self) -> bytes:
        return self.stdout_path.read_bytes()

    def stderr(self) -> bytes:
        return self.stderr_path.read_bytes()

    def log_records(self) -> list[dict]:
        records = []
        for line in self.stderr().splitlines() + self.stdout().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def wait_gone(pids: list[int], timeout: float = 5.0) -> float:
    t0 = time.monotonic()
    wait_for_sync(lambda: not any(pid_alive(p) for p in pids), timeout=timeout)
    return time.monotonic() - t0
