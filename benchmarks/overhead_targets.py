"""The three supervisors the overhead benchmark runs: Monoceros and its peers.

Each target writes its own configuration for a pool of ``replicas`` copies
of one worker command, starts its supervisor, says which pids the supervisor
itself believes are its workers, and stops it. The settings chosen for each
are the ones listed in docs/benchmarks-overhead.md; what matters for a fair
comparison is stated next to them here.

circus and supervisor are installed into a virtual environment of their own
under a cache directory (`peer_venv`), never into Monoceros's.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field

import aiohttp

# The versions measured for docs/benchmarks-overhead.md.
PEERS = ("circus==0.19.0", "supervisor==4.3.0")
STOP_TIMEOUT = 30.0


def peer_version(name: str) -> str:
    return dict(p.split("==") for p in PEERS)[name]


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "monoceros-bench")


def peer_venv(log) -> str:
    """A virtual environment holding circus and supervisor; made if missing."""
    venv = os.path.join(cache_dir(), "peers")
    stamp = os.path.join(venv, "installed.txt")
    try:
        with open(stamp) as f:
            if f.read().split() == list(PEERS):
                return venv
    except OSError:
        pass
    log(f"installing {' and '.join(PEERS)} into {venv} (once)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True)
    subprocess.run(
        [os.path.join(venv, "bin", "pip"), "install", "--quiet", *PEERS],
        check=True,
    )
    with open(stamp, "w") as f:
        f.write("\n".join(PEERS) + "\n")
    return venv


@dataclass
class Pool:
    """What every target is asked to run: the same command for all three."""

    replicas: int
    worker: str  # the worker script
    args: tuple[str, ...]
    workdir: str


@dataclass
class Target:
    """One supervisor under test. Subclasses know its configuration."""

    name: str = "?"
    env: dict[str, str] = field(default_factory=dict)
    # Sent to the supervisor if the benchmark dies: SIGTERM, so that it
    # stops its workers as on a normal shutdown.
    pdeathsig: str = "TERM"
    process: subprocess.Popen | None = None
    log_path: str = ""

    # ------------------------------------------------------------ interface

    def argv(self, config: str) -> list[str]:
        raise NotImplementedError

    def write_config(self, pool: Pool) -> str:
        raise NotImplementedError

    async def ready(self, pool: Pool) -> None:
        """Return once the supervisor answers its own control interface."""

    async def worker_pids(self, pool: Pool) -> set[int]:
        """The worker pids the supervisor reports, through its own interface."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    # ---------------------------------------------------------------- common

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, pool: Pool) -> float:
        """Start the supervisor; return the monotonic time just before."""
        config = self.write_config(pool)
        self.log_path = os.path.join(pool.workdir, f"{self.name}.log")
        # A parent-death signal: if the benchmark itself is killed, each
        # supervisor is told at once (see `pdeathsig`).
        prefix = []
        if shutil.which("setpriv"):
            prefix = [shutil.which("setpriv"), "--pdeathsig", self.pdeathsig, "--"]
        with open(self.log_path, "ab") as log:
            started = time.monotonic()
            self.process = subprocess.Popen(
                prefix + self.argv(config),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=pool.workdir,
                start_new_session=True,
            )
        return started

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{self.name} exited early; see the end of its log:\n"
                + self.log_tail()
            )

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    async def stop(self) -> None:
        """SIGTERM (each stops its workers on it); SIGKILL past STOP_TIMEOUT."""
        if self.process is None:
            return
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.alive():
            self.process.kill()
        self.process.wait()
        self.process = None


# -- Monoceros ------------------------------------------------------------------


@dataclass
class MonocerosTarget(Target):
    name: str = "monoceros"
    admin_port: int | None = None

    def argv(self, config: str) -> list[str]:
        return [sys.executable, "-m", "monoceros", "-c", config]

    def write_config(self, pool: Pool) -> str:
        path = os.path.join(pool.workdir, "monoceros.yaml")
        args = ", ".join(json.dumps(a) for a in pool.args)
        # The smallest backoff, never growing (reset_after 0): circus and
        # supervisord restart a worker that exited while running at once.
        # A budget the churn cannot exhaust (about one crash a second per
        # worker).
        text = f"""\
            admin:
              address: 127.0.0.1
              port: 0
            supervisor:
              workers:
                - name: bench
                  replicas: {pool.replicas}
                  exec: {json.dumps(pool.worker)}
                  args: [{args}]
                  signal_timeout: 10s
                  max_restarts: 100000
                  restart_window: 60s
                  restart_backoff:
                    initial: 1ms
                    max: 1ms
                    reset_after: 0s
            """
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
        return path

    async def ready(self, pool: Pool) -> None:
        """Find the admin port in the log (the configuration asks for port 0)."""
        deadline = time.monotonic() + 30
        while self.admin_port is None:
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("monoceros did not log its admin port")
            with open(self.log_path, errors="replace") as f:
                for line in f:
                    if '"admin listening"' in line:
                        self.admin_port = json.loads(line)["port"]
            await asyncio.sleep(0.05)

    async def worker_pids(self, pool: Pool) -> set[int]:
        await self.ready(pool)
        url = f"http://127.0.0.1:{self.admin_port}/workers"
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                body = await response.json()
        return {
            w["pid"] for w in body["workers"] if w["state"] in ("starting", "ready")
        }

    async def stop(self) -> None:
        await super().stop()
        self.admin_port = None

    def describe(self) -> str:
        from monoceros import __version__

        return (
            f"Monoceros {__version__}: supervisor mode, restart_backoff 1ms "
            "(no growth), logs (JSON) to a file"
        )


# -- circus ---------------------------------------------------------------------


@dataclass
class CircusTarget(Target):
    name: str = "circus"
    venv: str = ""
    check_delay: float = 1.0
    # circusd refuses SIGTERM while it is still starting its watchers
    # ("arbiter is already running arbiter_start_watchers command") and
    # would then run on forever. SIGKILL instead: its workers are left,
    # and end by themselves (see the worker script in overhead_bench).
    pdeathsig: str = "KILL"

    def _endpoint(self, pool: Pool) -> str:
        return f"ipc://{pool.workdir}/circus.sock"

    def argv(self, config: str) -> list[str]:
        return [os.path.join(self.venv, "bin", "circusd"), config]

    def write_config(self, pool: Pool) -> str:
        path = os.path.join(pool.workdir, "circus.ini")
        # check_delay is how often circusd looks for dead processes and
        # starts replacements (it does not act on SIGCHLD): 1 s, like
        # supervisord's fixed main-loop timeout. Its ZeroMQ endpoints are
        # Unix sockets in the run's directory (no TCP port to collide on).
        # The statistics process (circusd-stats) and the web console stay
        # off: naming a stats_endpoint would quietly start the former.
        work = pool.workdir
        text = f"""\
            [circus]
            check_delay = {self.check_delay:g}
            endpoint = {self._endpoint(pool)}
            pubsub_endpoint = ipc://{work}/circus-pubsub.sock
            statsd = False
            httpd = False
            loglevel = INFO

            [watcher:bench]
            cmd = {pool.worker}
            args = {" ".join(pool.args)}
            numprocesses = {pool.replicas}
            warmup_delay = 0
            respawn = True
            max_retry = -1
            copy_env = True
            graceful_timeout = 10
            """
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
        return path

    async def _ctl(self, pool: Pool, *args: str) -> str:
        ctl = os.path.join(self.venv, "bin", "circusctl")
        proc = await asyncio.create_subprocess_exec(
            ctl, "--endpoint", self._endpoint(pool), "--timeout", "10", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        return out.decode(errors="replace").strip()

    async def worker_pids(self, pool: Pool) -> set[int]:
        out = await self._ctl(pool, "list", "bench")
        try:
            return {int(p) for p in out.split(",") if p}
        except ValueError as exc:
            raise RuntimeError(f"circusctl list: {out}") from exc

    def describe(self) -> str:
        return (
            f"circus {peer_version('circus')}: check_delay {self.check_delay:g}s, "
            "warmup_delay 0, max_retry -1, no stats, no httpd, outputs not captured"
        )


# -- supervisord ----------------------------------------------------------------


@dataclass
class SupervisordTarget(Target):
    name: str = "supervisord"
    venv: str = ""

    def argv(self, config: str) -> list[str]:
        return [os.path.join(self.venv, "bin", "supervisord"), "-n", "-c", config]

    def write_config(self, pool: Pool) -> str:
        path = os.path.join(pool.workdir, "supervisord.conf")
        work = pool.workdir
        os.makedirs(os.path.join(work, "childlogs"), exist_ok=True)
        factory = "supervisor.rpcinterface:make_main_rpcinterface"
        # minfds: supervisord raises its open-file limit to this; at the
        # common default of 1024 it cannot run 500 workers (three pipes
        # and two log files each). The workers' output goes to its default
        # AUTO log files, as a user would have it.
        text = f"""\
            [supervisord]
            nodaemon = true
            logfile = {work}/supervisord-main.log
            pidfile = {work}/supervisord.pid
            childlogdir = {work}/childlogs
            minfds = 4096

            [unix_http_server]
            file = {work}/supervisor.sock

            [rpcinterface:supervisor]
            supervisor.rpcinterface_factory = {factory}

            [supervisorctl]
            serverurl = unix://{work}/supervisor.sock

            [program:bench]
            command = {pool.worker} {" ".join(pool.args)}
            process_name = %(program_name)s_%(process_num)03d
            numprocs = {pool.replicas}
            autorestart = true
            startsecs = 0
            stopwaitsecs = 10
            """
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
        self._config = path
        return path

    async def worker_pids(self, pool: Pool) -> set[int]:
        ctl = os.path.join(self.venv, "bin", "supervisorctl")
        proc = await asyncio.create_subprocess_exec(
            ctl, "-c", self._config, "pid", "all",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        pids = set()
        for line in out.decode(errors="replace").split():
            if line.isdigit() and int(line) > 0:
                pids.add(int(line))
        return pids

    def describe(self) -> str:
        return (
            f"supervisor {peer_version('supervisor')}: numprocs, autorestart true, "
            "startsecs 0, "
            "minfds 4096, outputs to AUTO log files"
        )
