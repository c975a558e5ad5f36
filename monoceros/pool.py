"""A pool: N copies of one command, kept alive, recycled and stopped.

Workers are numbered by index. Steady state uses indexes 0..replicas-1; a
replacement started before the worker it replaces stops (make before break)
takes the lowest free index, so the pool uses at most ``2 * replicas``
indexes (``PoolConfig.index_range``) and two live processes never share a
``MULTIPROCESS_WORKER_ID`` or a port. A crashed worker's index is reserved
while its restart waits out the backoff, so the restart reuses it.

Every decision runs on the event loop; a worker's exit is an event (the
reaper resolves its future), timers are tasks, and structural changes that
span awaits (a replacement) are serialized by one lock per pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import signal
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from monoceros.config import PoolConfig
from monoceros.limits import draw_lifespan, tree_rss
from monoceros.logs import OutputQueue
from monoceros.metrics import Metrics, ProcessSample
from monoceros.output import LineForwarder
from monoceros.process import ChildReaper, describe_status
from monoceros.units import render_port_template
from monoceros.worker import LIVE_STATES, Worker, WorkerState

log = logging.getLogger(__name__)

# After Envoy ACKs an endpoint set without a worker, requests already routed
# to it may still arrive for a few milliseconds (3.7 ms measured): wait this
# long before signalling it.
DRAIN_GRACE = 0.05


@dataclass(frozen=True)
class Endpoint:
    worker_id: str
    host: str
    port: int
    draining: bool = False  # leaving: no new requests, in-flight ones finish


class EndpointSink(Protocol):
    """Where a proxy-mode pool publishes its endpoint set.

    The set holds the READY workers and the DRAINING ones (flagged), so the
    proxy stops sending new requests to a draining worker at once rather
    than when its health checks start failing.
    """

    async def publish(self, pool: str, endpoints: Sequence[Endpoint]) -> bool:
        """Publish the set; return once it is applied (True) or timed out."""
        ...

    async def wait_serving(self, pool: str, endpoint: Endpoint) -> bool:
        """Return once the proxy routes requests to `endpoint` (or timed out)."""
        ...


class Readiness(Protocol):
    async def wait_ready(self, pool: Pool, worker: Worker) -> bool | None:
        """True once `worker` is ready, False if it exited first, None if it
        did not become ready in time."""
        ...


class Liveness(Protocol):
    """Periodic checks of READY workers; failing ones are replaced."""

    interval: float
    threshold: int

    async def check(self, worker: Worker) -> bool: ...


class StartupDelay:
    """Supervisor mode: a worker alive `startup_wait_time` after spawn is READY."""

    async def wait_ready(self, pool: Pool, worker: Worker) -> bool:
        assert worker.process is not None
        delay = pool.config.startup_wait_time
        done, _ = await asyncio.wait([worker.process.exited], timeout=delay)
        return not done


_STARTUP_DELAY = StartupDelay()

# The states of `monoceros_workerpool_worker_state`, as the original named them.
GAUGE_STATES = ("prepared", "running", "terminating", "terminated")


@dataclass
class PoolContext:
    reaper: ChildReaper
    output: OutputQueue
    metrics: Metrics
    on_failed: Callable[[Pool, str], None]
    sink: EndpointSink | None = None
    readiness: Readiness | None = None
    liveness: Liveness | None = None
    worker_type: str = "worker"


class Pool:
    def __init__(self, config: PoolConfig, ctx: PoolContext):
        self.config = config
        self.name = config.name
        self.ctx = ctx
        self.desired = config.replicas
        self.workers: dict[int, Worker] = {}
        self.stopping = False
        self.failed = False
        self._reserved: set[int] = set()
        self._crashes: dict[int, deque[float]] = {}
        self._streak: dict[int, int] = {}
        self._restarts: dict[int, int] = {}
        self._ready: dict[Worker, asyncio.Future[bool]] = {}
        self._worker_tasks: dict[Worker, set[asyncio.Task]] = {}
        self._lifespans: dict[Worker, asyncio.Task] = {}
        self._memory_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._exits: set[asyncio.Task] = set()
        self._replace_lock = asyncio.Lock()
        self._gauges_due = False
        self._forgotten = False
        self._base_env = {**os.environ, **dict(config.env)}
        m = ctx.metrics
        m.restarts.labels(self.name, ctx.worker_type)
        m.sigkill.labels(self.name)
        self._update_gauges()

    @property
    def readiness(self) -> Readiness:
        return self.ctx.readiness or _STARTUP_DELAY

    # ---------------------------------------------------------------- start

    async def start(self) -> None:
        """Start `replicas` workers, `startup_wait_time` apart."""
        self._start_memory_watch()
        for n in range(self.desired):
            if self.stopping:
                return
            if n and self.config.startup_wait_time:
                await asyncio.sleep(self.config.startup_wait_time)
            if self.staying_count() < self.desired:
                self._spawn(self._free_index())

    def _free_index(self) -> int:
        taken = self.workers.keys() | self._reserved
        index = 0
        while index in taken:
            index += 1
        return index

    def _port(self, index: int) -> int | None:
        server = self.config.server
        return server.port_arg.start_port + index if server else None

    def _argv(self, worker: Worker) -> list[str]:
        """exec, args, then the port argument.

        The original put the port argument first; it goes last here so that
        an interpreter (`python server.py`, `node app.js`) can be the exec.
        """
        argv = [self.config.exec_path or self.config.exec, *self.config.args]
        server = self.config.server
        if server is not None and worker.port is not None:
            value = render_port_template(server.port_arg.value_template, worker.port)
            argv += [server.port_arg.name, value]
        return argv

    def _spawn(self, index: int) -> Worker | None:
        if self.stopping:
            return None
        worker = Worker(self.name, index, port=self._port(index))
        env = {**self._base_env, "MULTIPROCESS_WORKER_ID": worker.env_id}
        forwarder = LineForwarder(
            self.ctx.output,
            self.name,
            worker.worker_id,
            on_bad_json=self.ctx.metrics.failed_json.inc,
        )
        self.workers[index] = worker
        try:
            worker.spawn(
                self.ctx.reaper, self._argv(worker), env, self.config.cwd, forwarder
            )
        except OSError as exc:
            del self.workers[index]
            log.error(
                "cannot start worker",
                extra={**worker.log_fields, "error": str(exc)},
            )
            self._crashed(worker)
            return None
        log.info("worker started", extra={**worker.log_fields, "port": worker.port})
        self._ready[worker] = asyncio.get_running_loop().create_future()
        exit_task = asyncio.create_task(self._watch_exit(worker))
        self._exits.add(exit_task)
        exit_task.add_done_callback(self._exits.discard)
        self._worker_task(worker, self._become_ready(worker))
        self._arm_lifespan(worker)
        self._update_gauges()
        return worker

    # ------------------------------------------------------------ readiness

    async def _become_ready(self, worker: Worker) -> None:
        ready = await self.readiness.wait_ready(self, worker)
        if ready is None and worker.state is WorkerState.STARTING:
            log.warning(
                "worker did not become ready in time: restarting it",
                extra=worker.log_fields,
            )
            self._track(self._stop_unready(worker))
        elif ready and worker.state is WorkerState.STARTING:
            worker.state = WorkerState.READY
            worker.ready_at = time.monotonic()
            log.info("worker ready", extra=worker.log_fields)
            self._update_gauges()
            await self._publish()
            if self.ctx.sink is not None and worker.port is not None:
                endpoint = Endpoint(worker.worker_id, "127.0.0.1", worker.port)
                if not await self.ctx.sink.wait_serving(self.name, endpoint):
                    log.warning("proxy not yet routing to worker",
                                extra=worker.log_fields)
            if self.ctx.liveness is not None:
                self._worker_task(worker, self._watch_health(worker))
        future = self._ready.get(worker)
        if future is not None and not future.done():
            future.set_result(worker.state is WorkerState.READY)

    async def _stop_unready(self, worker: Worker) -> None:
        """A crash in all but name: stopped, counted against the budget and
        restarted after the backoff, at the same index once it is free."""
        await self._stop_worker(worker)
        if not self.stopping:
            self._crashed(worker)

    async def _watch_health(self, worker: Worker) -> None:
        failures = 0
        while worker.state is WorkerState.READY and not worker.stop_requested:
            # Read each time: a reload may change the interval or threshold.
            liveness = self.ctx.liveness
            if liveness is None:
                return
            await asyncio.sleep(liveness.interval)
            if worker.state is not WorkerState.READY:
                return
            if await liveness.check(worker):
                failures = 0
                continue
            failures += 1
            log.warning(
                "worker failed a health check",
                extra={**worker.log_fields, "failures": failures},
            )
            if failures >= liveness.threshold:
                self.recycle(worker, "health")
                return

    async def _await_ready(self, worker: Worker) -> bool:
        future = self._ready.get(worker)
        if future is None:
            return worker.state is WorkerState.READY
        return await asyncio.shield(future)

    # ---------------------------------------------------------------- exits

    async def _watch_exit(self, worker: Worker) -> None:
        assert worker.process is not None
        returncode = await worker.process.wait()
        was_published = worker.ready_at is not None
        expected = worker.stop_requested
        worker.state = WorkerState.EXITED
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        for task in self._worker_tasks.pop(worker, ()):
            task.cancel()
        self._lifespans.pop(worker, None)
        future = self._ready.pop(worker, None)
        if future is not None and not future.done():
            future.set_result(False)
        self._update_gauges()
        fields = {
            **worker.log_fields,
            "returncode": returncode,
            "uptime": round(worker.uptime(), 3),
        }
        if not worker.process.group_alive():
            self.ctx.reaper.forget_group(worker.process)
        if expected:
            log.info("worker stopped", extra=fields)
        else:
            log.warning(
                "worker exited unexpectedly: " + describe_status(returncode),
                extra=fields,
            )
            if not self.stopping:
                self._crashed(worker)
            # Whatever the worker left in its group goes with it.
            if worker.process.group_alive():
                self._track(self._stop_worker(worker))
        if was_published:
            await self._publish()
        await worker.close_output()

    def _crashed(self, worker: Worker) -> None:
        """Count a crash against the budget; restart after a backoff."""
        now = time.monotonic()
        window = self.config.restart_window
        crashes = self._crashes.setdefault(worker.index, deque())
        while crashes and now - crashes[0] > window:
            crashes.popleft()
        if len(crashes) >= self.config.max_restarts:
            self._fail(
                f"worker {worker.worker_id} crashed {len(crashes) + 1} times "
                f"within {window:g}s (max_restarts {self.config.max_restarts})"
            )
            return
        crashes.append(now)
        backoff = self.config.restart_backoff
        streak = self._streak.get(worker.index, 0)
        if worker.uptime() >= backoff.reset_after:
            streak = 0
        streak += 1
        self._streak[worker.index] = streak
        delay = min(backoff.max, backoff.initial * 2 ** (streak - 1))
        # Jitter spreads restarts of workers that crashed together; it never
        # goes below `initial`, the least a user asked to wait.
        delay = max(backoff.initial, random.uniform(delay / 2, delay))
        self._reserved.add(worker.index)
        self._track(self._restart_later(worker.index, delay))
        log.info(
            "worker restart scheduled",
            extra={
                "pool": self.name,
                "worker_id": worker.worker_id,
                "delay": round(delay, 3),
                "crashes_in_window": len(crashes),
            },
        )

    async def _restart_later(self, index: int, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        finally:
            self._reserved.discard(index)
        # Judged by the workers that are meant to stay: one being replaced
        # still serves (and counts for health) but its replacement takes its
        # place, so counting both would drop this restart and leave the pool
        # one short once the old worker stops.
        if self.stopping or self.staying_count() >= self.desired:
            self._update_gauges()  # no longer "terminated": not coming back
            return
        if index in self.workers:
            index = self._free_index()
        if self._spawn(index) is not None:
            self._count_restart("crash", index)

    def _fail(self, reason: str) -> None:
        if self.failed:
            return
        self.failed = True
        log.error("pool failed: " + reason, extra={"pool": self.name})
        self._update_gauges()
        self.ctx.on_failed(self, reason)

    def _count_restart(self, reason: str, index: int) -> None:
        self._restarts[index] = self._restarts.get(index, 0) + 1
        m = self.ctx.metrics
        m.restarts.labels(self.name, self.ctx.worker_type).inc()
        m.restart_reasons.labels(self.name, self.ctx.worker_type, reason).inc()

    # -------------------------------------------------------------- recycle

    def recycle(self, worker: Worker, reason: str) -> None:
        """Replace `worker` (make before break) because a limit was reached."""
        if self.stopping or worker.retire_reason or worker.state not in LIVE_STATES:
            return
        worker.retire_reason = reason
        self.ctx.metrics.limit_events.labels(self.name, reason).inc()
        log.info("worker reached a limit", extra={**worker.log_fields, "limit": reason})
        self._track(self._replace(worker, "recycle"))

    async def rolling_restart(self) -> int:
        """Replace every worker, one at a time; return how many were replaced."""
        replaced = 0
        for worker in sorted(self.workers.values(), key=lambda w: w.index):
            if self.stopping:
                break
            if worker.state not in LIVE_STATES or worker.stop_requested:
                continue
            worker.retire_reason = worker.retire_reason or "manual"
            if await self._replace(worker, "manual"):
                replaced += 1
        return replaced

    async def _replace(self, old: Worker, reason: str) -> bool:
        async with self._replace_lock:
            if self.stopping or old.stop_requested or old.state not in LIVE_STATES:
                return False
            new = self._spawn(self._free_index())
            if new is None:
                old.retire_reason = None
                return False
            if not await self._await_ready(new):
                log.warning(
                    "replacement did not become ready: keeping the worker",
                    extra={**old.log_fields, "replacement": new.worker_id},
                )
                old.retire_reason = None
                return False
            self._count_restart(reason, new.index)
            await self._retire(old)
            return True

    async def _retire(self, worker: Worker) -> None:
        """Drain (proxy mode) and stop one worker."""
        worker.stop_requested = True
        if worker.state is WorkerState.READY and self.ctx.sink is not None:
            worker.state = WorkerState.DRAINING
            self._update_gauges()
            await self._publish()
            await asyncio.sleep(DRAIN_GRACE)
        await self._stop_worker(worker)

    async def _stop_worker(self, worker: Worker) -> None:
        result = await worker.stop(self.config.signal_timeout)
        if result.killed:
            self.ctx.metrics.sigkill.labels(self.name).inc()
        if worker.process is not None and not worker.process.group_alive():
            self.ctx.reaper.forget_group(worker.process)
        self._update_gauges()

    # --------------------------------------------------------------- reload

    def reconfigure(self, config: PoolConfig) -> None:
        """Take a new configuration of this pool (same name, same mode).

        Settings (limits, restart budget, timeouts, environment) apply to
        running workers at once: lifespans are drawn again against each
        worker's age, the memory watch restarts with its new interval. A
        new command or port argument is used by workers started from now on;
        the caller replaces the running ones. `replicas` is left to `scale`.
        """
        old = self.config
        self.config = dataclasses.replace(config, replicas=self.desired)
        self._base_env = {**os.environ, **dict(config.env)}
        if old.limits != config.limits:
            for worker in list(self.workers.values()):
                if worker.state in LIVE_STATES and not worker.retire_reason:
                    self._arm_lifespan(worker)
            self._start_memory_watch()

    # ---------------------------------------------------------------- scale

    async def scale(self, replicas: int) -> dict:
        """Run `replicas` workers from now on; return what changed.

        New workers start at the lowest free indexes (in proxy mode they join
        Envoy when ready); surplus workers, highest indexes first, are
        drained and stopped. Nothing else restarts.
        """
        self.config = dataclasses.replace(self.config, replicas=replicas)
        self.desired = replicas
        started, stopped = [], []
        # Counted again before each start: a scale, a crash restart or a
        # replacement may change the pool during the stagger. A worker being
        # replaced does not count; its replacement does.
        while not self.stopping and self.staying_count() < self.desired:
            if started and self.config.startup_wait_time:
                await asyncio.sleep(self.config.startup_wait_time)
                if self.stopping or self.staying_count() >= self.desired:
                    break
            worker = self._spawn(self._free_index())
            if worker is None:
                break  # could not start: counted as a crash, restarted later
            started.append(worker.worker_id)
        live = sorted(
            (w for w in self.workers.values()
             if w.state in LIVE_STATES and not w.stop_requested
             and not w.retire_reason),
            key=lambda w: w.index,
        )
        surplus = live[self.desired:]
        for worker in surplus:
            worker.retire_reason = "scale"
            stopped.append(worker.worker_id)
        await asyncio.gather(*(self._retire(w) for w in surplus))
        self._update_gauges()
        log.info(
            "pool scaled",
            extra={"pool": self.name, "replicas": replicas,
                   "started": started, "stopped": stopped},
        )
        return {"replicas": replicas, "started": started, "stopped": stopped}

    # --------------------------------------------------------------- limits

    def _arm_lifespan(self, worker: Worker) -> None:
        old = self._lifespans.pop(worker, None)
        if old is not None:
            old.cancel()
        limits = self.config.limits
        if not limits.lifespan:
            return
        delay = max(0.0, draw_lifespan(limits) - worker.uptime())
        task = self._track(self._lifespan(worker, delay))
        self._worker_tasks.setdefault(worker, set()).add(task)
        self._lifespans[worker] = task

    async def _lifespan(self, worker: Worker, delay: float) -> None:
        await asyncio.sleep(delay)
        self._lifespans.pop(worker, None)
        self.recycle(worker, "lifespan")

    def _start_memory_watch(self) -> None:
        if self._memory_task is not None:
            self._memory_task.cancel()
            self._memory_task = None
        if self.config.limits.memory:
            self._memory_task = self._track(self._watch_memory())

    async def _watch_memory(self) -> None:
        limits = self.config.limits
        while not self.stopping:
            await asyncio.sleep(limits.memory_check_interval)
            live = [w for w in self.workers.values() if w.state in LIVE_STATES]
            pids = [w.pid for w in live if w.pid]
            usage = await asyncio.to_thread(tree_rss, pids)
            for worker in live:
                rss = usage.get(worker.pid or 0, 0)
                if rss > limits.memory and not worker.retire_reason:
                    log.warning(
                        "worker over its memory limit",
                        extra={**worker.log_fields, "rss": rss, "limit": limits.memory},
                    )
                    self.recycle(worker, "memory")

    # ----------------------------------------------------------------- stop

    async def stop(self) -> None:
        """Stop every worker gracefully; no restart happens after this."""
        self.stopping = True
        for task in list(self._tasks):
            task.cancel()
        for tasks in self._worker_tasks.values():
            for task in tasks:
                task.cancel()
        workers = list(self.workers.values())
        for worker in workers:
            worker.stop_requested = True
        if self.ctx.sink is not None:
            for worker in workers:
                if worker.state is WorkerState.READY:
                    worker.state = WorkerState.DRAINING
            await self._publish()
            await asyncio.sleep(DRAIN_GRACE)
        await asyncio.gather(*(self._stop_worker(w) for w in workers))
        if self._exits:
            await asyncio.wait(list(self._exits), timeout=5.0)
        self._update_gauges()

    def forget_metrics(self) -> None:
        """Drop this pool's gauges (it was removed): a gauge left behind
        would report workers that no longer exist. Counters keep their
        history, as Prometheus expects of them."""
        self._forgotten = True  # no later recount may bring them back
        m = self.ctx.metrics
        for state in GAUGE_STATES:
            m.worker_state.remove(self.name, state)
        m.ready_workers.remove(self.name)
        m.pool_healthy.remove(self.name)

    def kill_all(self) -> None:
        """SIGKILL every worker's process group now (a hurried shutdown)."""
        for worker in list(self.workers.values()):
            if worker.process is not None and worker.process.group_alive():
                worker.process.signal_group(signal.SIGKILL)

    # -------------------------------------------------------------- queries

    def live_count(self) -> int:
        return sum(
            1
            for w in self.workers.values()
            if w.state in LIVE_STATES and not w.stop_requested
        )

    def staying_count(self) -> int:
        """Live workers not on their way out (being replaced or scaled away)."""
        return sum(
            1
            for w in self.workers.values()
            if w.state in LIVE_STATES and not w.stop_requested and not w.retire_reason
        )

    def ready_count(self) -> int:
        return sum(1 for w in self.workers.values() if w.state is WorkerState.READY)

    def healthy(self) -> bool:
        if self.failed:
            return False
        running = min(self.live_count(), self.desired)
        return running * 100 >= self.config.desired_healthy_percentage * self.desired

    def restarts_of(self, index: int) -> int:
        return self._restarts.get(index, 0)

    def endpoints(self) -> list[Endpoint]:
        """READY workers, and DRAINING ones flagged as such."""
        return [
            Endpoint(
                w.worker_id,
                "127.0.0.1",
                w.port,
                draining=w.state is WorkerState.DRAINING,
            )
            for w in sorted(self.workers.values(), key=lambda w: w.index)
            if w.port is not None
            and w.state in (WorkerState.READY, WorkerState.DRAINING)
        ]

    def process_samples(self) -> list[ProcessSample]:
        return [
            ProcessSample(self.name, w.worker_id, w.pid)
            for w in self.workers.values()
            if w.pid and w.process and w.process.alive
        ]

    # -------------------------------------------------------------- helpers

    async def _publish(self) -> None:
        if self.ctx.sink is None:
            return
        if not await self.ctx.sink.publish(self.name, self.endpoints()):
            log.warning("endpoint update not acknowledged in time",
                        extra={"pool": self.name})

    def _track(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _worker_task(self, worker: Worker, coro: Coroutine[Any, Any, Any]) -> None:
        task = self._track(coro)
        self._worker_tasks.setdefault(worker, set()).add(task)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "pool task failed",
                exc_info=task.exception(),
                extra={"pool": self.name},
            )

    def _update_gauges(self) -> None:
        """Recount the pool's gauges, once per turn of the event loop.

        A worker's exit changes several states in a row; counting the whole
        pool for each would cost O(workers) several times per event.
        """
        if self._gauges_due:
            return
        self._gauges_due = True
        try:
            asyncio.get_running_loop().call_soon(self._refresh_gauges)
        except RuntimeError:  # no loop (a pool being built outside one)
            self._refresh_gauges()

    def _refresh_gauges(self) -> None:
        self._gauges_due = False
        if self._forgotten:
            return
        counts = dict.fromkeys(GAUGE_STATES, 0)
        for worker in self.workers.values():
            if worker.state is WorkerState.PENDING:
                counts["prepared"] += 1
            elif worker.state in LIVE_STATES and not worker.stop_requested:
                counts["running"] += 1
            elif worker.state is WorkerState.EXITED:
                counts["terminated"] += 1
            else:
                counts["terminating"] += 1
        counts["terminated"] += len(self._reserved)
        m = self.ctx.metrics
        for state, count in counts.items():
            m.worker_state.labels(self.name, state).set(count)
        m.ready_workers.labels(self.name).set(self.ready_count())
        m.pool_healthy.labels(self.name).set(1 if self.healthy() else 0)
