"""The supervisor core against real processes (in-process event loop)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import replace

import pytest

from monoceros.config import BackoffConfig, Config, LimitsConfig, PoolConfig
from monoceros.errors import ExitStatus
from monoceros.logs import STDERR, STDOUT, OutputQueue
from monoceros.supervisor import Supervisor
from monoceros.worker import WorkerState
from tests.conftest import wait_for

SH = "/bin/sh"


def pool(args: str, **kw) -> PoolConfig:
    kw.setdefault("signal_timeout", 2.0)
    return PoolConfig(
        name=kw.pop("name", "p"),
        exec=SH,
        exec_path=SH,
        args=("-c", args),
        **kw,
    )


def metric(sup: Supervisor, name: str, **labels) -> float:
    value = sup.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); look at its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
async def supervise():
    """Start a Supervisor on a config; stop it and check nothing is left."""
    started: list[tuple[Supervisor, asyncio.Task]] = []

    async def start(*pools: PoolConfig) -> Supervisor:
        import io

        output = OutputQueue({STDOUT: io.BytesIO(), STDERR: io.BytesIO()})
        sup = Supervisor(Config(pools=pools), output)
        task = asyncio.create_task(sup.run())
        started.append((sup, task))
        await wait_for(lambda: sup.pools, timeout=5)
        return sup

    yield start
    for sup, task in started:
        pids = [w.pid for p in sup.pools.values() for w in p.workers.values()]
        if not task.done():
            sup.stop()
        await asyncio.wait_for(task, 30)
        assert sup.reaper.children == 0
        for pid in pids:
            assert not alive(pid)


def cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def pids(sup: Supervisor, name: str = "p") -> dict[int, int]:
    return {
        w.index: w.pid
        for w in sup.pools[name].workers.values()
        if w.state is WorkerState.READY
    }


async def test_killed_worker_is_replaced_and_counted(supervise):
    sup = await supervise(pool("exec sleep 1000", replicas=2))
    before = await wait_for(lambda: len(pids(sup)) == 2 and pids(sup))
    os.kill(before[0], signal.SIGKILL)
    after = await wait_for(lambda: len(pids(sup)) == 2 and pids(sup)[0] != before[0]
                           and pids(sup))
    assert after[1] == before[1]
    assert metric(sup, "monoceros_workerpool_restarts_total",
                  pool="p", worker_type="worker") == 1
    assert metric(sup, "monoceros_workerpool_restart_reasons_total",
                  pool="p", worker_type="worker", reason="crash") == 1


async def test_worker_environment_and_id(supervise, tmp_path):
    out = tmp_path / "env"
    cfg = pool(f'echo "$MULTIPROCESS_WORKER_ID $EXTRA $(pwd)" > {out}.$$; '
               "exec sleep 1000", env=(("EXTRA", "x1"),), cwd=str(tmp_path))
    sup = await supervise(cfg)
    pid = (await wait_for(lambda: pids(sup)))[0]
    path = tmp_path / f"env.{pid}"
    await wait_for(path.exists)
    await wait_for(lambda: path.read_text().strip())
    assert path.read_text().split() == ["p_p-0", "x1", str(tmp_path)]


async def test_crash_loop_backs_off_then_fails_the_pool(supervise):
    backoff = BackoffConfig(initial=0.05, max=0.4, reset_after=30)
    sup = await supervise(pool("exit 3", max_restarts=4, restart_backoff=backoff))
    task_start = time.monotonic()
    status = await asyncio.wait_for(sup.wait_stopped(), 10)
    elapsed = time.monotonic() - task_start
    assert status is None
    assert sup.exit_status is ExitStatus.POOL_FAILED
    assert sup.pools["p"].failed
    assert metric(sup, "monoceros_workerpool_restarts_total",
                  pool="p", worker_type="worker") == 4
    # Delays of about 0.05, 0.1, 0.2, 0.4 (each jittered down by at most half).
    assert elapsed >= (0.05 + 0.1 + 0.2 + 0.4) / 2


async def test_recycles_and_stops_never_consume_the_budget(supervise):
    limits = LimitsConfig(lifespan=0.3, jitter_ratio=0.0)
    sup = await supervise(pool("exec sleep 1000", max_restarts=0, limits=limits))
    await wait_for(lambda: metric(sup, "monoceros_workerpool_limits_events_total",
                                  pool="p", limit_event="lifespan") >= 3)
    assert not sup.pools["p"].failed


async def test_sigterm_ignored_group_is_killed_after_timeout(supervise, tmp_path):
    child = tmp_path / "child"
    script = f"trap '' TERM; sleep 1000 & echo $! > {child}; wait"
    sup = await supervise(pool(script, signal_timeout=0.5))
    leader = (await wait_for(lambda: pids(sup)))[0]
    await wait_for(lambda: child.exists() and child.read_text().strip())
    grandchild = int(child.read_text())
    t0 = time.monotonic()
    sup.stop()
    await asyncio.wait_for(sup.wait_stopped(), 10)
    assert time.monotonic() - t0 >= 0.5
    assert metric(sup, "monoceros_workerpool_sigkill_total", pool="p") == 1
    assert not alive(leader) and not alive(grandchild)


async def test_lifespan_recycles_spread_with_jitter(supervise):
    limits = LimitsConfig(lifespan=1.0, jitter_ratio=0.8)
    sup = await supervise(pool("exec sleep 1000", replicas=4, limits=limits))
    first = await wait_for(lambda: len(pids(sup)) == 4 and set(pids(sup).values()))
    gone_at: dict[int, float] = {}

    def record():
        current = {w.pid for w in sup.pools["p"].workers.values()}
        for pid in first - current - gone_at.keys():
            gone_at[pid] = time.monotonic()
        return len(gone_at) == 4

    await wait_for(record, timeout=10, interval=0.005)
    times = sorted(gone_at.values())
    assert times[-1] - times[0] > 0.05, times  # not all at the same moment
    assert sup.pools["p"].live_count() == 4


async def test_memory_limit_recycles_a_leaking_worker(supervise):
    leak = (
        f"exec {sys.executable} -c \"import time\nb=[]\n"
        "while True:\n b.append(bytearray(8<<20)); time.sleep(0.05)\""
    )
    limits = LimitsConfig(memory=64 << 20, memory_check_interval=0.1)
    sup = await supervise(pool(leak, limits=limits))
    first = (await wait_for(lambda: pids(sup)))[0]
    await wait_for(lambda: metric(sup, "monoceros_workerpool_limits_events_total",
                                  pool="p", limit_event="memory") >= 1)
    await wait_for(lambda: pids(sup) and pids(sup)[min(pids(sup))] != first)
    assert not alive(first) or sup.pools["p"].workers


async def test_sighup_rolling_restart_keeps_replicas_running(supervise):
    sup = await supervise(pool("exec sleep 1000", replicas=3))
    before = set((await wait_for(lambda: len(pids(sup)) == 3 and pids(sup))).values())
    low = []

    async def sample():
        while True:
            low.append(sup.pools["p"].live_count())
            await asyncio.sleep(0.002)

    sampler = asyncio.create_task(sample())
    os.kill(os.getpid(), signal.SIGHUP)
    await wait_for(lambda: len(pids(sup)) == 3 and not before & set(pids(sup).values()))
    sampler.cancel()
    assert min(low) >= 3
    assert sup.pools["p"].workers.keys() <= set(range(6))
    ids = {w.env_id for w in sup.pools["p"].workers.values()}
    assert len(ids) == 3


async def test_no_respawn_after_stop(supervise):
    sup = await supervise(pool("trap 'exit 1' TERM; sleep 1000 & wait", replicas=3))
    await wait_for(lambda: len(pids(sup)) == 3)
    sup.stop()
    await asyncio.wait_for(sup.wait_stopped(), 10)
    assert metric(sup, "monoceros_workerpool_restarts_total",
                  pool="p", worker_type="worker") == 0
    assert not sup.pools["p"].workers


async def test_orphaned_grandchild_is_reaped_not_counted(supervise, tmp_path):
    # The first run leaves a grandchild in its own session and exits; the
    # restarted worker stays up.
    mark = tmp_path / "ran"
    script = (f"if [ ! -e {mark} ]; then touch {mark}; setsid sleep 0.3 & exit 0; "
              "fi; exec sleep 1000")
    sup = await supervise(pool(script))
    await wait_for(lambda: metric(sup, "monoceros_supervisor_orphans_reaped_total")
                   >= 1 and pids(sup), timeout=5)
    await wait_for(lambda: not any(alive(int(p)) and "sleep 0.3" in cmdline(p)
                                   for p in os.listdir("/proc") if p.isdigit()))
    assert metric(sup, "monoceros_workerpool_restarts_total",
                  pool="p", worker_type="worker") == 1


async def test_health_follows_desired_percentage(supervise):
    backoff = BackoffConfig(initial=5, max=5)
    cfg = pool("exec sleep 1000", replicas=2, desired_healthy_percentage=100,
               restart_backoff=backoff)
    sup = await supervise(cfg)
    await wait_for(lambda: len(pids(sup)) == 2)
    assert sup.healthy()
    os.kill(pids(sup)[1], signal.SIGKILL)
    await wait_for(lambda: not sup.healthy())


async def test_startup_is_staggered(supervise):
    sup = await supervise(pool("exec sleep 1000", replicas=3, startup_wait_time=0.2))
    await wait_for(lambda: len(pids(sup)) == 3)
    starts = sorted(w.process.started_mono for w in sup.pools["p"].workers.values())
    assert starts[1] - starts[0] >= 0.19 and starts[2] - starts[1] >= 0.19


def test_replace_keeps_config_frozen():
    cfg = pool("true")
    assert replace(cfg, replicas=3).index_range == 6


async def test_scale_during_a_replacement_counts_the_replacement(supervise):
    sup = await supervise(pool("exec sleep 1000", replicas=2, startup_wait_time=0.5))
    p = sup.pools["p"]
    await wait_for(lambda: len(pids(sup)) == 2)
    rolling = asyncio.create_task(p.rolling_restart())
    # The first replacement is starting (0.5 s before it is ready).
    await wait_for(lambda: any(w.retire_reason for w in p.workers.values()))
    await p.scale(3)
    await rolling
    await wait_for(lambda: p.staying_count() == 3 and len(pids(sup)) == 3)


async def test_overlapping_scales_end_at_the_last_count(supervise):
    sup = await supervise(pool("exec sleep 1000", replicas=1, startup_wait_time=0.2))
    p = sup.pools["p"]
    await wait_for(lambda: len(pids(sup)) == 1)
    up = asyncio.create_task(p.scale(5))
    await wait_for(lambda: len(p.workers) >= 3)
    await p.scale(1)
    await up
    await wait_for(lambda: len(p.workers) == 1 and p.staying_count() == 1)
