"""One pool's Envoy process: start, readiness, restart on exit, drain, stop.

Envoy reads only its bootstrap from a file; listeners, routes, clusters and
endpoints arrive over ADS. So a restarted Envoy needs nothing but to be
started again: it re-fetches the current state from the xDS server, which
must therefore be up before the first Envoy starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time

from monoceros.config import PoolConfig
from monoceros.envoy import names
from monoceros.envoy.admin import EnvoyAdmin, EnvoyAdminError
from monoceros.envoy.binary import envoy_command
from monoceros.envoy.bootstrap import build_bootstrap, write_bootstrap
from monoceros.errors import StartupError
from monoceros.logs import OutputQueue
from monoceros.metrics import Metrics
from monoceros.output import LineForwarder
from monoceros.process import ChildReaper
from monoceros.worker import Worker, WorkerState
from monoceros.xds import SnapshotCache, types

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
RESTART_BACKOFF = (0.1, 5.0)  # first delay, cap


class EnvoyProxy:
    def __init__(
        self,
        pool: PoolConfig,
        *,
        binary: str,
        xds_socket: str,
        cache: SnapshotCache,
        reaper: ChildReaper,
        output: OutputQueue,
        metrics: Metrics,
    ):
        assert pool.server is not None
        self.pool = pool
        self.server = pool.server
        self.node = names.node_id(pool.name)
        self.cache = cache
        self.admin = EnvoyAdmin("127.0.0.1", self.server.admin_port)
        self._binary = binary
        self._xds_socket = xds_socket
        self._reaper = reaper
        self._output = output
        self._metrics = metrics
        # Names this Monoceros in the node metadata: an Envoy answering on
        # the admin port without it is someone else's.
        self.instance = f"{os.getpid()}-{cache.boot_id}"
        self._bootstrap_path: str | None = None
        self._process: Worker | None = None
        self._stopping = False
        self._supervise_task: asyncio.Task | None = None
        metrics.restarts.labels(pool.name, "proxy")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    # ---------------------------------------------------------------- start

    async def start(self) -> None:
        """Start Envoy and wait until it serves the pool's listener."""
        bootstrap = build_bootstrap(
            self.pool, self._xds_socket, instance=self.instance
        )
        try:
            self._bootstrap_path = write_bootstrap(
                bootstrap, self.server.proxy_config_path
            )
        except OSError as exc:
            raise StartupError(
                f"pool {self.pool.name}: cannot write Envoy's bootstrap in "
                f"{self.server.proxy_config_path}: {exc.strerror or exc}"
            ) from exc
        self._spawn()
        try:
            await self._wait_serving(START_TIMEOUT)
        finally:
            # Supervised even if it failed to serve: a later exit is then
            # restarted. At Monoceros's own start-up the error stops
            # everything anyway, and stop() cancels this.
            if not self._stopping:
                self._supervise_task = asyncio.create_task(self._supervise())

    def _spawn(self) -> None:
        assert self._bootstrap_path is not None
        argv = envoy_command(
            self._binary, self._bootstrap_path, drain_time=self.pool.signal_timeout
        )
        worker = Worker(self.pool.name, -1, name=f"{self.pool.name}-envoy")
        forwarder = LineForwarder(
            self._output, self.pool.name, worker.worker_id,
            on_bad_json=self._metrics.failed_json.inc,
        )
        try:
            worker.spawn(self._reaper, argv, dict(os.environ), None, forwarder)
        except OSError as exc:
            raise StartupError(
                f"pool {self.pool.name}: cannot start Envoy: {exc}"
            ) from exc
        self._process = worker
        log.info(
            "envoy started",
            extra={"pool": self.pool.name, "pid": worker.pid,
                   "admin_port": self.server.admin_port},
        )

    async def _wait_serving(self, timeout: float) -> None:
        """LIVE on the admin port and the pool's listener active.

        Envoy's own readiness is no proof the configuration was applied: a
        listener Envoy rejects (its port taken, say) is NACKed and Envoy still
        turns LIVE, with no listener. That is a start-up error here.
        """
        assert self._process is not None and self._process.process is not None
        exited = self._process.process.exited
        listener = names.listener_name(self.pool.name)
        deadline = time.monotonic() + timeout
        foreign = False
        while time.monotonic() < deadline:
            if exited.done():
                hint = (
                    f"; admin port {self.server.admin_port} is served by "
                    "another Envoy"
                    if foreign
                    else "; see its log lines above"
                )
                raise StartupError(
                    f"pool {self.pool.name}: Envoy exited during start-up "
                    f"(status {exited.result()}){hint}"
                )
            rejected = self.cache.rejections(self.node, types.LISTENER)
            if rejected:
                raise StartupError(
                    f"pool {self.pool.name}: Envoy rejected the listener on "
                    f"{self.server.listener_address}:{self.server.listener_port}: "
                    f"{rejected[0]}"
                )
            if await self.admin.ready():
                if not await self._is_ours():
                    foreign = True
                elif await self._has_listener(listener):
                    log.info("envoy serving", extra={"pool": self.pool.name,
                                                     "pid": self.pid})
                    return
            await asyncio.wait([exited], timeout=0.05)
        raise StartupError(
            f"pool {self.pool.name}: Envoy did not serve its listener within "
            f"{timeout:g}s (admin port {self.server.admin_port})"
        )

    async def _is_ours(self) -> bool:
        """Whether the Envoy on the admin port is the one this process runs."""
        try:
            info = await self.admin.server_info()
        except EnvoyAdminError:
            return False
        metadata = info.get("node", {}).get("metadata", {})
        return metadata.get(names.INSTANCE_KEY) == self.instance

    async def _has_listener(self, name: str) -> bool:
        try:
            return any(lst.name == name for lst in await self.admin.listeners())
        except EnvoyAdminError:
            return False

    # --------------------------------------------------------------- restart

    async def _supervise(self) -> None:
        """Restart Envoy whenever it exits unless Monoceros is stopping."""
        streak = 0
        while not self._stopping:
            assert self._process is not None and self._process.process is not None
            started = time.monotonic()
            returncode = await self._process.process.wait()
            self._reaper.forget_group(self._process.process)
            await self._process.close_output()
            if self._stopping:
                return
            log.error(
                "envoy exited: restarting it",
                extra={"pool": self.pool.name, "returncode": returncode},
            )
            streak = 1 if time.monotonic() - started > 30 else streak + 1
            first, cap = RESTART_BACKOFF
            delay = min(cap, first * 2 ** (streak - 1))
            await asyncio.sleep(random.uniform(delay / 2, delay))
            if self._stopping:
                return
            self._metrics.restarts.labels(self.pool.name, "proxy").inc()
            self._metrics.restart_reasons.labels(
                self.pool.name, "proxy", "crash"
            ).inc()
            try:
                self._spawn()
                await self._wait_serving(START_TIMEOUT)
            except StartupError as exc:
                log.error(str(exc), extra={"pool": self.pool.name})

    # ------------------------------------------------------------ shutdown

    async def drain(self) -> None:
        """Ask Envoy to drain its listeners gracefully (shutdown step 2)."""
        if self._process is None or self._process.state is WorkerState.EXITED:
            return
        if not await self._is_ours():
            log.warning(
                "not draining: the Envoy on the admin port is not this one",
                extra={"pool": self.pool.name, "admin_port": self.server.admin_port},
            )
            return
        try:
            await self.admin.drain_listeners(graceful=True)
            log.info("envoy listeners draining", extra={"pool": self.pool.name})
        except EnvoyAdminError as exc:
            log.warning("cannot drain envoy listeners",
                        extra={"pool": self.pool.name, "error": str(exc)})

    async def restart(self) -> None:
        """A new Envoy process, for a new bootstrap (admin port, directory).

        Its listener closes for the moment the new process needs to start
        (about 0.1 s); every other change reaches Envoy over xDS instead.
        """
        await self.stop()
        self.admin = EnvoyAdmin("127.0.0.1", self.server.admin_port)
        self._stopping = False
        self._metrics.restarts.labels(self.pool.name, "proxy").inc()
        self._metrics.restart_reasons.labels(self.pool.name, "proxy", "manual").inc()
        await self.start()

    async def stop(self) -> None:
        self._stopping = True
        if self._supervise_task is not None:
            self._supervise_task.cancel()
        worker = self._process
        if worker is not None and worker.process is not None:
            result = await worker.stop(self.server.signal_timeout)
            if result.killed:
                self._metrics.sigkill.labels(self.pool.name).inc()
            self._reaper.forget_group(worker.process)
            await worker.close_output()
            log.info("envoy stopped", extra={"pool": self.pool.name,
                                             "returncode": result.returncode})
        await self.admin.close()
