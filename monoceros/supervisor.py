"""The Supervisor: one event loop, one queue of typed events, many pools.

Signal handlers only put an event on the queue; the loop below decides. The
Supervisor knows no HTTP and no command line: the admin server and the CLI
call into it (`request`, `healthy`, `workers`), never the reverse.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import resource
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from monoceros.config import Config, PoolConfig, check_config, load_config
from monoceros.errors import ConfigError, ExitStatus, MonocerosError, StartupError
from monoceros.guardian import Guardian
from monoceros.logs import OutputQueue
from monoceros.metrics import Metrics
from monoceros.pool import Pool, PoolContext
from monoceros.process import ChildReaper, become_subreaper
from monoceros.reload import PoolChange, ReloadPlan, describe, plan_reload

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# Every other signal whose default action would end Monoceros (and orphan its
# workers) is caught and logged instead: user signals, timers, SIGPWR, SIGIO,
# the real-time signals. Faults raised by the CPU itself (SIGSEGV, SIGBUS,
# SIGFPE, SIGILL) and SIGABRT keep their default: catching them would loop.
_NOT_IGNORED = {
    signal.SIGKILL,
    signal.SIGSTOP,
    signal.SIGCHLD,
    signal.SIGCONT,
    signal.SIGTSTP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGWINCH,
    signal.SIGURG,
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGFPE,
    signal.SIGILL,
    signal.SIGABRT,
    signal.SIGHUP,
    *STOP_SIGNALS,
}
IGNORED_SIGNALS = tuple(sorted(set(signal.valid_signals()) - _NOT_IGNORED))
# File descriptors Monoceros needs besides its workers' pipes (sockets,
# log output, the admin and xDS servers, libraries).
BASE_FDS = 256


@dataclass(frozen=True)
class SignalReceived:
    signum: int


@dataclass(frozen=True)
class PoolFailed:
    pool: str
    reason: str


@dataclass(frozen=True)
class Command:
    """A request from the admin API; `reply` gets the result."""

    action: str
    pool: str | None
    value: Any
    reply: asyncio.Future = field(compare=False)


class CommandError(MonocerosError):
    """A request that cannot be carried out; `not_found` for unknown names."""

    exit_status = ExitStatus.USAGE

    def __init__(self, message: str, not_found: bool = False):
        super().__init__(message)
        self.not_found = not_found


Event = SignalReceived | PoolFailed | Command


class Frontend(Protocol):
    """What stands in front of the pools: in proxy mode, Envoys fed over xDS.

    Called in this order: `start` before any worker starts,
    `pool_context` once per pool, `drain` when shutdown begins (before any
    worker is signalled), `stop` after every worker has stopped.
    """

    async def start(self, supervisor: Supervisor) -> None: ...

    def pool_context(self, pool: PoolConfig, ctx: PoolContext) -> PoolContext: ...

    async def add_pool(self, pool: PoolConfig) -> None: ...

    async def remove_pool(self, name: str) -> None: ...

    async def update_pool(
        self, old: PoolConfig, new: PoolConfig, ctx: PoolContext
    ) -> str | None: ...

    async def drain(self) -> None: ...

    async def stop(self) -> None: ...


class Supervisor:
    def __init__(
        self,
        config: Config,
        output: OutputQueue,
        metrics: Metrics | None = None,
        frontend: Frontend | None = None,
        frontend_factory: Callable[[Config], Frontend] | None = None,
    ):
        self.config = config
        self.output = output
        self.metrics = metrics or Metrics()
        self.guardian = Guardian()
        self.reaper = ChildReaper(on_orphan=self._orphan_reaped, guardian=self.guardian)
        self.pools: dict[str, Pool] = {}
        self.shutting_down = False
        self.exit_status = ExitStatus.OK
        self.frontend = frontend
        self._frontend_factory = frontend_factory
        self._reload_lock = asyncio.Lock()
        self._removing: dict[str, Pool] = {}
        # Called with the new configuration after a reload (the admin server
        # rebinds this way: the Supervisor knows no HTTP).
        self.reload_hooks: list[Callable[[Config], Awaitable[str | None]]] = []
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._tasks: set[asyncio.Task] = set()
        self._stopped = asyncio.Event()
        self.metrics.add_process_source(self._process_samples)
        self.metrics.proxy_mode.set(1 if config.proxy_mode else 0)
        output.on_drop = self.metrics.log_dropped.inc

    # ------------------------------------------------------------ interface

    def healthy(self) -> bool:
        if self.shutting_down or not self.pools:
            return False
        return all(pool.healthy() for pool in self.pools.values())

    async def request(
        self, action: str, pool: str | None = None, value: Any = None
    ) -> Any:
        """Queue a command (from the admin API) and wait for its result.

        Raises CommandError for a request that cannot be carried out.
        """
        reply = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(Command(action, pool, value, reply))
        return await reply

    def stop(self) -> None:
        self._queue.put_nowait(SignalReceived(signal.SIGTERM))

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # ------------------------------------------------------------------ run

    async def run(self) -> ExitStatus:
        """Run until asked to stop or a pool fails; return the exit status."""
        loop = asyncio.get_running_loop()
        self._check_fd_limit()
        become_subreaper()
        self.guardian.start()
        self.reaper.install()
        for sig in STOP_SIGNALS + (signal.SIGHUP,) + IGNORED_SIGNALS:
            loop.add_signal_handler(sig, self._queue.put_nowait, SignalReceived(sig))
        try:
            if self.frontend is None and self.config.proxy_mode:
                self.frontend = self._new_frontend(self.config)
            if self.frontend is not None:
                await self.frontend.start(self)
            for pool_config in self.config.pools:
                pool = Pool(pool_config, self._pool_context(pool_config))
                self.pools[pool.name] = pool
            for pool in self.pools.values():
                self._spawn_task(pool.start())
            log.info(
                "monoceros started",
                extra={"pools": list(self.pools), "proxy_mode": self.config.proxy_mode},
            )
            await self._event_loop()
        except MonocerosError as exc:
            self.exit_status = exc.exit_status
            raise
        finally:
            await self._shutdown()
            for sig in STOP_SIGNALS + (signal.SIGHUP,) + IGNORED_SIGNALS:
                loop.remove_signal_handler(sig)
            self.guardian.close()
            self.reaper.uninstall()
            # Nothing reaps here any more: let init adopt what is left.
            become_subreaper(False)
            self._stopped.set()
        return self.exit_status

    async def _event_loop(self) -> None:
        while True:
            event = await self._queue.get()
            match event:
                case SignalReceived(signum) if signum in STOP_SIGNALS:
                    log.info("stop requested", extra={"signal": _name(signum)})
                    return
                case SignalReceived(signal.SIGHUP) if self.config.path:
                    log.info("SIGHUP: reloading the configuration")
                    self._spawn_task(self._reload_quietly())
                case SignalReceived(signal.SIGHUP):
                    log.info("SIGHUP: rolling restart of every pool")
                    for pool in self.pools.values():
                        self._spawn_task(pool.rolling_restart())
                case SignalReceived(signum):
                    log.info("signal ignored", extra={"signal": _name(signum)})
                case PoolFailed(pool, reason):
                    log.error(
                        "stopping: a pool failed",
                        extra={"pool": pool, "reason": reason},
                    )
                    self.exit_status = ExitStatus.POOL_FAILED
                    return
                case Command():
                    self._handle_command(event)

    def _handle_command(self, command: Command) -> None:
        handlers = {
            "restart": self._restart_pool,
            "scale": self._scale_pool,
            "reload": lambda command: self.reload(),
        }
        handler = handlers.get(command.action)
        if handler is None:
            command.reply.set_exception(CommandError(f"unknown {command.action!r}"))
            return
        task = self._spawn_task(handler(command))

        def relay(task: asyncio.Task) -> None:
            if command.reply.done():
                return
            if task.cancelled():
                command.reply.set_exception(CommandError("Monoceros is stopping"))
            elif task.exception() is not None:
                command.reply.set_exception(task.exception())
            else:
                command.reply.set_result(task.result())

        task.add_done_callback(relay)

    def _all_pools(self) -> list[Pool]:
        """Running pools, and pools a reload is still stopping."""
        return [*self.pools.values(), *self._removing.values()]

    def _pool_named(self, name: str | None) -> Pool:
        pool = self.pools.get(name or "")
        if pool is None:
            raise CommandError(f"no pool named {name!r}", not_found=True)
        return pool

    async def _restart_pool(self, command: Command) -> dict:
        pool = self._pool_named(command.pool)
        log.info("rolling restart requested", extra={"pool": pool.name})
        return {"pool": pool.name, "replaced": await pool.rolling_restart()}

    async def _scale_pool(self, command: Command) -> dict:
        # Under the reload lock: a reload in progress would otherwise write
        # its configuration over this scale.
        async with self._reload_lock:
            return await self._scale_locked(command)

    async def _scale_locked(self, command: Command) -> dict:
        pool = self._pool_named(command.pool)
        replicas = command.value
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
            raise CommandError(f"replicas must be an integer >= 1, got {replicas!r}")
        pools = tuple(
            dataclasses.replace(p, replicas=replicas) if p.name == pool.name else p
            for p in self.config.pools
        )
        candidate = dataclasses.replace(self.config, pools=pools)
        try:
            check_config(candidate)
            self._check_fd_limit(candidate)
        except (ConfigError, StartupError) as exc:
            raise CommandError(
                f"cannot scale {pool.name} to {replicas}: {exc}"
            ) from exc
        self.config = candidate
        return {"pool": pool.name, **await pool.scale(replicas)}

    # --------------------------------------------------------------- reload

    async def reload(self) -> dict:
        """Re-read the configuration file and apply the difference live.

        An invalid file changes nothing: the running state is kept and a
        CommandError says why. See `monoceros.reload` for what each kind of
        change does.
        """
        async with self._reload_lock:
            path = self.config.path
            if not path:
                raise CommandError("this configuration was not read from a file")
            try:
                new = await asyncio.to_thread(load_config, path)
            except ConfigError as exc:
                self.metrics.reloads.labels("rejected").inc()
                log.error("reload refused: invalid configuration: " + str(exc))
                raise CommandError(f"invalid configuration: {exc}") from exc
            plan = plan_reload(self.config, new)
            result = await self._apply(plan, new)
            self.metrics.reloads.labels("applied").inc()
            log.info("configuration reloaded", extra=result)
            return result

    async def _reload_quietly(self) -> None:
        try:
            await self.reload()
        except CommandError:
            pass  # logged and counted by reload()
        except MonocerosError as exc:
            log.error("reload failed: " + str(exc))

    async def _apply(self, plan: ReloadPlan, new: Config) -> dict:
        gone = [c for c in plan.pools if c.removed or c.mode_changed]
        await asyncio.gather(*(self._remove_pool(c.name) for c in gone))
        self.config = new
        self.metrics.proxy_mode.set(1 if new.proxy_mode else 0)

        added = [c.new for c in plan.pools if c.added or c.mode_changed]
        failed: dict[str, str] = {}  # pools whose Envoy could not start
        proxies = [p for p in added if p is not None and p.server is not None]
        if proxies and self.frontend is None:
            self.frontend = self._new_frontend(new)
            await self.frontend.start(self)
        elif proxies:
            assert self.frontend is not None
            outcomes = await asyncio.gather(
                *(self.frontend.add_pool(p) for p in proxies), return_exceptions=True
            )
            for pool_config, outcome in zip(proxies, outcomes, strict=True):
                if isinstance(outcome, MonocerosError):
                    failed[pool_config.name] = str(outcome)
                elif isinstance(outcome, BaseException):
                    raise outcome
        for pool_config in added:
            assert pool_config is not None
            if pool_config.name in failed:
                continue
            pool = Pool(pool_config, self._pool_context(pool_config))
            self.pools[pool.name] = pool
            self._spawn_task(pool.start())

        changed = [c for c in plan.pools if c not in gone and not c.added]
        problems = await asyncio.gather(*(self._apply_pool(c) for c in changed))
        result: dict[str, Any] = {"pools": {c.name: describe(c) for c in plan.pools}}
        for name, problem in failed.items():
            result["pools"][name] = f"not started: {problem}"
            log.error("reload could not start a pool",
                      extra={"pool": name, "error": problem})
        for change, problem in zip(changed, problems, strict=True):
            if problem:
                result["pools"][change.name] += f"; {problem}"
                log.error("reload not applied by Envoy",
                          extra={"pool": change.name, "error": problem})
        if plan.xds_changed:
            result["xds"] = "xds settings apply at the next start of Monoceros"
        if plan.admin_changed:
            for hook in self.reload_hooks:
                note = await hook(new)
                if note:
                    result["admin"] = note
        return result

    async def _apply_pool(self, change: PoolChange) -> str | None:
        pool = self.pools[change.name]
        assert change.old is not None and change.new is not None
        problem = None
        if change.kinds - {"replicas"}:
            pool.reconfigure(change.new)
        if change.kinds & {"proxy", "envoy"} and self.frontend is not None:
            try:
                problem = await self.frontend.update_pool(
                    change.old, change.new, pool.ctx
                )
            except MonocerosError as exc:
                problem = str(exc)
        if "replicas" in change.kinds:
            await pool.scale(change.new.replicas)
        if change.restart_workers:
            await pool.rolling_restart()
        return problem

    async def _remove_pool(self, name: str) -> None:
        pool = self.pools.pop(name)
        # Until it has stopped, a shutdown must still stop it.
        self._removing[name] = pool
        log.info("pool removed from the configuration", extra={"pool": name})
        await pool.stop()
        del self._removing[name]
        pool.forget_metrics()
        if self.frontend is not None and pool.config.server is not None:
            await self.frontend.remove_pool(name)

    def _new_frontend(self, config: Config) -> Frontend:
        if self._frontend_factory is None:
            raise StartupError("proxy mode is not available here")
        return self._frontend_factory(config)

    async def _shutdown(self) -> None:
        self.shutting_down = True
        self.metrics.sigterm_received.set(1)
        for task in list(self._tasks):
            task.cancel()
        hurry = asyncio.create_task(self._hurry_on_second_signal())
        try:
            if self.frontend is not None:
                await self.frontend.drain()
            log.info("stopping every pool")
            await asyncio.gather(*(pool.stop() for pool in self._all_pools()))
            if self.frontend is not None:
                await self.frontend.stop()
            await self._stop_adopted()
        finally:
            hurry.cancel()
        # Anything left (a worker that ignored even SIGKILL) is reported.
        if self.reaper.children:
            log.error("children still running at exit",
                      extra={"count": self.reaper.children})
        log.info("monoceros stopped", extra={"exit_status": int(self.exit_status)})

    async def _stop_adopted(self, timeout: float = 2.0) -> None:
        """Stop descendants that left their worker's group (a `setsid`
        grandchild) and were adopted by Monoceros as a subreaper: group
        signals never reach them, and they must not outlive a stop."""
        adopted = [
            pid for pid in adopted_children() if pid != self.guardian.pid
        ]
        if not adopted:
            return
        log.info("stopping adopted descendants", extra={"pids": adopted})
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in adopted:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                self.reaper.reap()
                adopted = [p for p in adopted if _alive(p)]
                if not adopted:
                    return
                await asyncio.sleep(0.02)

    async def _hurry_on_second_signal(self) -> None:
        """A second stop signal during shutdown kills what is left at once.

        The graceful path may wait up to `signal_timeout` per worker; an
        operator who asks twice wants it over now. Workers are still waited
        for and reaped: nothing is left behind either way.
        """
        while True:
            event = await self._queue.get()
            match event:
                case SignalReceived(signum) if signum in STOP_SIGNALS:
                    log.warning(
                        "second stop signal: killing every worker now",
                        extra={"signal": _name(signum)},
                    )
                    for pool in self._all_pools():
                        pool.kill_all()
                case Command(reply=reply) if not reply.done():
                    reply.set_exception(CommandError("Monoceros is stopping"))

    # -------------------------------------------------------------- helpers

    def _pool_context(self, pool_config: PoolConfig) -> PoolContext:
        ctx = PoolContext(
            reaper=self.reaper,
            output=self.output,
            metrics=self.metrics,
            on_failed=self._pool_failed,
        )
        if self.frontend is not None:
            ctx = self.frontend.pool_context(pool_config, ctx)
        return ctx

    def _pool_failed(self, pool: Pool, reason: str) -> None:
        self._queue.put_nowait(PoolFailed(pool.name, reason))

    def _orphan_reaped(self, pid: int, returncode: int) -> None:
        if pid == self.guardian.pid:
            return
        self.metrics.orphans_reaped.inc()
        log.debug("reaped an orphaned descendant",
                  extra={"pid": pid, "returncode": returncode})

    def _spawn_task(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        # A refused request is answered to whoever asked, not a failure.
        if error is not None and not isinstance(error, CommandError):
            log.error("supervisor task failed", exc_info=error)

    def _process_samples(self):
        for pool in list(self.pools.values()):
            yield from pool.process_samples()

    def _check_fd_limit(self, config: Config | None = None) -> None:
        """Raise the soft open-file limit; refuse a config that cannot fit."""
        config = config or self.config
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                soft = hard
            except (ValueError, OSError):
                pass
        # Two pipe ends per worker, for up to index_range workers per pool.
        needed = BASE_FDS + sum(2 * p.index_range for p in config.pools)
        if soft != resource.RLIM_INFINITY and needed > soft:
            raise StartupError(
                f"the open-file limit is {soft} but these pools may need {needed} "
                "file descriptors (2 per worker, counting replacements); raise "
                "the limit (ulimit -n) or lower replicas"
            )


def adopted_children() -> list[int]:
    """Children of this process not spawned as workers: orphans re-parented
    here because Monoceros is a child subreaper."""
    pids = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            continue
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
