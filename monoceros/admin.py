"""The admin HTTP server: /metrics, /health, /workers and pool commands.

It binds 127.0.0.1 unless the configuration says otherwise; endpoints that
change state accept POST only.
"""

from __future__ import annotations

import asyncio
import logging
import time

import psutil
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monoceros.config import AdminConfig
from monoceros.errors import StartupError
from monoceros.supervisor import CommandError, Supervisor

log = logging.getLogger(__name__)


class AdminServer:
    def __init__(self, supervisor: Supervisor, config: AdminConfig):
        self.supervisor = supervisor
        self.config = config
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Task | None = None
        app = web.Application(middlewares=[_json_errors])
        app.add_routes(
            [
                web.get("/metrics", self.metrics),
                web.get("/health", self.health),
                web.get("/workers", self.workers),
                web.post("/pools/{pool}/restart", self.restart_pool),
                web.post("/pools/{pool}/scale", self.scale_pool),
                web.post("/reload", self.reload),
            ]
        )
        self.app = app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.config.address, self.config.port, reuse_address=True
        )
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise StartupError(
                f"admin: cannot listen on {self.config.address}:{self.config.port}: "
                f"{exc.strerror or exc}"
            ) from exc
        server = site._server  # aiohttp exposes the bound port only here
        sockets = server.sockets if server is not None else []
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port
        log.info(
            "admin listening",
            extra={"address": self.config.address, "port": self.port},
        )

    async def reconfigure(self, config) -> str | None:
        """Move to a new admin address after a reload.

        The new address is bound before the old one closes, and the old one
        closes a moment later, so the reply to the request that asked for
        the reload still goes out on it.
        """
        if config.admin == self.config or self._runner is None:
            return None
        old_sites = list(self._runner.sites)
        new = config.admin
        site = web.TCPSite(self._runner, new.address, new.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            log.error("admin: cannot move to the new address; keeping the old one",
                      extra={"address": new.address, "port": new.port,
                             "error": str(exc)})
            return f"not moved: cannot listen on {new.address}:{new.port}: {exc}"
        self.config = new

        async def close_old() -> None:
            await asyncio.sleep(0.5)
            for old in old_sites:
                await old.stop()

        self._closing = asyncio.create_task(close_old())
        log.info("admin listening", extra={"address": new.address, "port": new.port})
        return f"moved to {new.address}:{new.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.supervisor.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(self, request: web.Request) -> web.Response:
        sup = self.supervisor
        healthy = sup.healthy()
        body = {
            "healthy": healthy,
            "shutting_down": sup.shutting_down,
            "pools": {
                name: {
                    "healthy": pool.healthy(),
                    "failed": pool.failed,
                    "running": pool.live_count(),
                    "ready": pool.ready_count(),
                    "replicas": pool.desired,
                }
                for name, pool in sup.pools.items()
            },
        }
        return web.json_response(body, status=200 if healthy else 503)

    async def workers(self, request: web.Request) -> web.Response:
        rows = []
        now_mono, now = time.monotonic(), time.time()
        for pool in self.supervisor.pools.values():
            for worker in sorted(pool.workers.values(), key=lambda w: w.index):
                proc = worker.process
                row = {
                    "pool": pool.name,
                    "id": worker.worker_id,
                    "pid": worker.pid,
                    "port": worker.port,
                    "state": worker.state.value,
                    "restarts": pool.restarts_of(worker.index),
                    "started_at": proc.started_at if proc else None,
                    "uptime": round(now_mono - proc.started_mono, 3) if proc else 0,
                    "rss_bytes": None,
                    "cpu_seconds": None,
                }
                if proc is not None and proc.alive:
                    try:
                        ps = psutil.Process(proc.pid)
                        with ps.oneshot():
                            times = ps.cpu_times()
                            row["rss_bytes"] = ps.memory_info().rss
                            row["cpu_seconds"] = round(times.user + times.system, 3)
                    except psutil.Error:
                        pass
                rows.append(row)
        return web.json_response({"time": now, "workers": rows})

    async def restart_pool(self, request: web.Request) -> web.Response:
        return await self._command("restart", request.match_info["pool"])

    async def scale_pool(self, request: web.Request) -> web.Response:
        """POST /pools/<name>/scale with {"replicas": N} (or ?replicas=N)."""
        raw = request.query.get("replicas")
        if raw is None and request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                return _error("the body must be JSON like {\"replicas\": 4}", 400)
            raw = body.get("replicas") if isinstance(body, dict) else None
        # Plain ASCII digits only: int() would also take "1_0" or other
        # scripts' digits, which no one means as a replica count.
        if isinstance(raw, str) and raw.isascii() and raw.isdigit():
            replicas = int(raw)
        else:
            replicas = raw
        if replicas is None:
            return _error("replicas is required", 400)
        return await self._command("scale", request.match_info["pool"], replicas)

    async def reload(self, request: web.Request) -> web.Response:
        return await self._command("reload", None)

    async def _command(
        self, action: str, pool: str | None, value=None
    ) -> web.Response:
        try:
            result = await self.supervisor.request(action, pool, value)
        except CommandError as exc:
            return _error(str(exc), 404 if exc.not_found else 400)
        return web.json_response(result)


@web.middleware
async def _json_errors(request: web.Request, handler) -> web.StreamResponse:
    """Every error answer is JSON, 404 and 405 included."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.reason, exc.status)


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)
