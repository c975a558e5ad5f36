"""The overhead benchmark's own parts: its worker, its FIFO and /proc readers.

The benchmark itself (circus and supervisord included) is run by hand; these
check that what it measures with is right, on real processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from benchmarks import overhead_proc as proc
from benchmarks.overhead_bench import WORKER_SCRIPT, Announcements, ratio


@pytest.fixture
def worker(tmp_path):
    path = tmp_path / "worker.sh"
    path.write_text(WORKER_SCRIPT)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def spawned():
    """Processes a test starts; killed at the end whatever happens."""
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


async def test_worker_announces_its_own_pid_then_sleeps(tmp_path, worker, spawned):
    fifo = Announcements(str(tmp_path / "a.fifo"))
    try:
        child = subprocess.Popen([worker, fifo.path, "idle"])
        spawned.append(child)
        await fifo.wait_for(lambda: fifo.mark() == 1, 10, "the announcement")

        assert fifo.events[0][1] == child.pid
        deadline = time.monotonic() + 5
        while proc_comm(child.pid) != "sleep":
            assert time.monotonic() < deadline, proc_comm(child.pid)
            await asyncio.sleep(0.01)
        assert fifo.when(0, 1) == fifo.events[0][0]
        with pytest.raises(ValueError):
            fifo.when(0, 2)
    finally:
        fifo.close()


async def test_churn_worker_exits_after_half_to_one_and_a_half_seconds(
    tmp_path, worker, spawned
):
    fifo = Announcements(str(tmp_path / "a.fifo"))
    try:
        children = [subprocess.Popen([worker, fifo.path, "churn"]) for _ in range(4)]
        spawned.extend(children)
        await fifo.wait_for(lambda: fifo.mark() == 4, 10, "the announcements")
        announced = dict((pid, at) for at, pid in fifo.events)

        lifetimes = []
        for child in children:
            while child.poll() is None:
                await asyncio.sleep(0.01)
            lifetimes.append(time.monotonic() - announced[child.pid])
        assert all(0.45 < life < 1.8 for life in lifetimes), lifetimes
        assert all(c.returncode == 0 for c in children)
    finally:
        fifo.close()


def test_proc_readers_on_a_busy_tagged_child(spawned):
    marker = f"OVERHEAD_BENCH_TEST=run-{os.getpid()}-{time.time_ns()}"
    name, value = marker.split("=")
    # Burns about 0.3 s of CPU, then waits to be killed.
    busy = (
        "import time\n"
        "end = time.process_time() + 0.3\n"
        "while time.process_time() < end: pass\n"
        "print('done', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", busy],
        stdout=subprocess.PIPE,
        env={**os.environ, name: value},
    )
    spawned.append(child)
    assert child.stdout.readline().strip() == b"done"

    assert 0.25 <= proc.cpu_seconds(child.pid) < 5
    assert proc.parent_of(child.pid) == os.getpid()
    assert child.pid in proc.children_of(os.getpid())
    memory = proc.memory(child.pid)
    assert memory.rss > 1024 * 1024
    assert memory.pss is None or 0 < memory.pss <= memory.rss
    assert proc.tagged(marker.encode()) == [child.pid]

    assert proc.kill_tagged(marker.encode()) == 1
    assert child.wait(timeout=5) == -signal.SIGKILL
    assert proc.cpu_seconds(child.pid) == 0.0
    assert proc.memory(child.pid) == proc.Memory(0, 0)


def test_ratio_text():
    assert ratio(1.0, 4.0) == "0.25x"
    assert ratio(0.0, 0.0) == "1.00x"
    assert ratio(1.0, 0.0) == "n/a"
    assert ratio(None, 1.0) == "n/a"


def proc_comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""
