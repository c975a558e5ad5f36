"""Supervisor overhead: Monoceros next to circus and supervisord.

Run with ``python -m benchmarks.overhead_bench`` (about 6 minutes;
``--quick`` for a short run of about 3). circus and supervisor are installed
on first use into a virtual environment of their own under the cache
directory (``$XDG_CACHE_HOME/monoceros-bench/peers``, by default
``~/.cache/monoceros-bench/peers``), so Monoceros's own environment never
gains their dependencies. In one run, for each of the three supervisors:

1. 200 idle workers: the supervisor's CPU share over a fixed window and its
   resident memory (RSS and PSS), counting the supervisor process and its
   helpers (Monoceros's guardian shell) but not the workers;
2. restart latency: SIGKILL one worker, time until its replacement has
   announced itself, 50 times;
3. start-up: from launching the supervisor until 500 workers have announced
   themselves;
4. crash churn: the supervisor's CPU while 10 workers each exit after
   0.5-1.5 s and are restarted (about 10 exits a second).

Every worker is the same shell script for all three: it writes its pid to
a FIFO the benchmark reads (its announcement), then execs ``sleep``, so the
pid announced is the pid the supervisor sees. The phases run one
supervisor after another, phase by phase, so a noisy neighbour on a shared
machine is spread over all three. Ratios are Monoceros over each peer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks import overhead_proc as proc
from benchmarks.overhead_targets import (
    CircusTarget,
    MonocerosTarget,
    Pool,
    SupervisordTarget,
    Target,
    peer_venv,
)

# The idle workers sleep for 15 minutes, not forever: should the benchmark
# be SIGKILLed, whatever escaped its clean-up ends by itself.
WORKER_SCRIPT = """\
#!/bin/sh
# $1: the FIFO to announce on; $2: idle or churn.
echo $$ > "$1"
if [ "$2" = churn ]; then
  # 500-1499 ms, spread by hashing the pid (dash has no $RANDOM, and a
  # command substitution would fork).
  ms=$(( 500 + ($$ * 7919) % 1000 ))
  frac=$(( 1000 + ms % 1000 ))
  exec sleep "$(( ms / 1000 )).${frac#1}"
fi
exec sleep 900
"""
ENV_MARKER = "MONOCEROS_OVERHEAD_BENCH"


@dataclass(frozen=True)
class Plan:
    idle_workers: int = 200
    idle_window: float = 20.0
    restarts: int = 50
    startup_workers: int = 500
    churn_workers: int = 10  # the first try; resized to reach churn_rate
    churn_rate: float = 10.0  # exits a second
    churn_window: float = 15.0
    pilot: float = 4.0  # the churn rate is measured this long before resizing
    settle: float = 2.0


QUICK = Plan(idle_window=5.0, restarts=10, churn_window=5.0, pilot=3.0, settle=1.5)


class Announcements:
    """Reads the workers' pids from the FIFO as they arrive, timestamped."""

    def __init__(self, path: str):
        os.mkfifo(path, 0o600)
        self.path = path
        # Read-write: the FIFO never reports end of file between writers,
        # and a worker's open() never blocks for want of a reader.
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self._buffer = b""
        self.events: list[tuple[float, int]] = []
        self._changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        now = time.monotonic()
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            if line.strip().isdigit():
                self.events.append((now, int(line)))
        self._changed.set()

    def mark(self) -> int:
        return len(self.events)

    def since(self, mark: int) -> list[tuple[float, int]]:
        return self.events[mark:]

    def when(self, mark: int, count: int) -> float:
        """When the count-th distinct pid since `mark` announced itself."""
        seen: set[int] = set()
        for at, pid in self.since(mark):
            seen.add(pid)
            if len(seen) == count:
                return at
        raise ValueError(f"fewer than {count} workers announced")

    async def wait_for(
        self, check: Callable[[], bool], timeout: float, what: str
    ) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"timed out waiting for {what}")
            self._changed.clear()
            # asyncio.timeout, not wait_for: on 3.11, wait_for can lose a
            # cancellation (Ctrl-C) that arrives as the wait completes.
            try:
                async with asyncio.timeout(min(remaining, 0.5)):
                    await self._changed.wait()
            except TimeoutError:
                pass

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self._fd)
        os.close(self._fd)


@dataclass
class Result:
    idle_cpu: float = 0.0  # share of one core
    idle_rss: int = 0
    idle_pss: int | None = None
    restart: list[float] = field(default_factory=list)
    startup: float = 0.0
    first_worker: float = 0.0
    churn_workers: int = 0
    churn_cpu: float = 0.0
    churn_helper_cpu: float = 0.0  # part of churn_cpu
    churn_rate: float = 0.0
    notes: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, plan: Plan, workdir: str, targets: list[Target]):
        self.plan = plan
        self.workdir = workdir
        self.targets = targets
        self.results = {t.name: Result() for t in targets}
        self.worker = os.path.join(workdir, "worker.sh")
        with open(self.worker, "w") as f:
            f.write(WORKER_SCRIPT)
        os.chmod(self.worker, 0o755)
        self.fifo: Announcements | None = None
        self.helpers: dict[str, set[int]] = {}

    # ------------------------------------------------------------- plumbing

    def pool(self, target: Target, replicas: int, mode: str) -> Pool:
        """A fresh directory per run, so no file of one run leaks into another."""
        workdir = tempfile.mkdtemp(prefix=f"{target.name}-", dir=self.workdir)
        assert self.fifo is not None
        return Pool(replicas, self.worker, (self.fifo.path, mode), workdir)

    async def launch(self, target: Target, pool: Pool) -> tuple[float, int]:
        assert self.fifo is not None
        mark = self.fifo.mark()
        started = target.start(pool)
        await self.wait_running(target, mark, pool.replicas, timeout=120)
        self.helpers[target.name] = await self.find_helpers(target, mark)
        return started, mark

    async def find_helpers(self, target: Target, mark: int) -> set[int]:
        """The supervisor's children that are not workers (and stay).

        A child seen twice, 0.3 s apart, that never announced itself is a
        helper (Monoceros's guardian); a worker between fork and its
        announcement is there for a few milliseconds only.
        """
        assert self.fifo is not None
        first = proc.children_of(target.pid)
        await asyncio.sleep(0.3)
        second = proc.children_of(target.pid)
        return (first & second) - {pid for _, pid in self.fifo.since(mark)}

    async def wait_running(
        self, target: Target, mark: int, count: int, timeout: float
    ) -> None:
        assert self.fifo is not None

        def done() -> bool:
            target.check_alive()
            return len({pid for _, pid in self.fifo.since(mark)}) >= count

        await self.fifo.wait_for(done, timeout, f"{count} workers of {target.name}")

    def live_workers(self, mark: int) -> list[int]:
        assert self.fifo is not None
        pids = {pid for _, pid in self.fifo.since(mark)}
        return sorted(pid for pid in pids if os.path.exists(f"/proc/{pid}"))

    def cpu(self, target: Target) -> float:
        """The supervisor's CPU seconds, with its helpers' (and theirs)."""
        return proc.cpu_seconds(target.pid) + self.helper_cpu(target)

    def helper_cpu(self, target: Target) -> float:
        return sum(
            proc.cpu_seconds(helper, with_children=True)
            for helper in self.helpers.get(target.name, ())
        )

    async def crosscheck(self, target: Target, pool: Pool, mark: int) -> None:
        """The supervisor's own list of its workers must match the announced.

        A supervisor that polls (circus) may list a dead pid until its next
        check: wait a few seconds for the two to agree before noting it.
        """
        deadline = time.monotonic() + 5
        while True:
            reported = await target.worker_pids(pool)
            live = set(self.live_workers(mark))
            if reported == live and len(live) == pool.replicas:
                return
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        note = (
            f"{target.name} reports {len(reported)} workers, "
            f"{len(live)} announced ones are alive ({len(reported ^ live)} differ)"
        )
        self.results[target.name].notes.append(note)
        print(f"  warning: {note}")

    # --------------------------------------------------------------- phases

    async def idle_and_restarts(self, target: Target) -> None:
        plan, res = self.plan, self.results[target.name]
        pool = self.pool(target, plan.idle_workers, "idle")
        _, mark = await self.launch(target, pool)
        await target.ready(pool)
        await asyncio.sleep(plan.settle)
        await self.crosscheck(target, pool, mark)
        await asyncio.sleep(1.0)  # let the control request's work finish

        cpu, wall = self.cpu(target), time.monotonic()
        await asyncio.sleep(plan.idle_window)
        res.idle_cpu = (self.cpu(target) - cpu) / (time.monotonic() - wall)
        memory = proc.total_memory([target.pid, *self.helpers[target.name]])
        res.idle_rss, res.idle_pss = memory.rss, memory.pss

        res.restart = await self.restarts(target, mark, plan.restarts)
        await self.crosscheck(target, pool, mark)
        await target.stop()

    async def restarts(self, target: Target, mark: int, count: int) -> list[float]:
        """SIGKILL a different worker each time, at a random moment.

        The random pause before each kill (0-1 s) keeps the kills out of
        step with circus's once-a-second check, which would otherwise make
        every one of its restarts wait a full period (or none).
        """
        assert self.fifo is not None
        rng = random.Random(7)
        samples = []
        victims = self.live_workers(mark)
        rng.shuffle(victims)
        for victim in victims[:count]:
            await asyncio.sleep(rng.uniform(0, 1.0))
            before = self.fifo.mark()
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)

            def replaced(before: int = before) -> bool:
                target.check_alive()
                return len(self.fifo.events) > before

            await self.fifo.wait_for(replaced, 15, f"{target.name} to restart")
            samples.append(self.fifo.events[before][0] - killed)
        return samples

    async def startup(self, target: Target) -> None:
        res = self.results[target.name]
        pool = self.pool(target, self.plan.startup_workers, "idle")
        started, mark = await self.launch(target, pool)
        res.first_worker = self.fifo.when(mark, 1) - started
        res.startup = self.fifo.when(mark, pool.replicas) - started
        await target.ready(pool)
        await self.crosscheck(target, pool, mark)
        await target.stop()

    async def churn(self, target: Target) -> None:
        """CPU while workers exit and are restarted about 10 times a second.

        A worker lives 0.5-1.5 s, then waits for its restart, so the rate a
        pool reaches depends on how fast its supervisor restarts: a pilot
        measures it, and a pool far off the target rate is resized once,
        so that every supervisor is measured doing the same work.
        """
        plan, res = self.plan, self.results[target.name]
        replicas = plan.churn_workers
        for attempt in range(2):
            pool = self.pool(target, replicas, "churn")
            await self.launch(target, pool)
            await asyncio.sleep(plan.settle)
            mark, pilot = self.fifo.mark(), time.monotonic()
            await asyncio.sleep(plan.pilot)
            rate = (self.fifo.mark() - mark) / (time.monotonic() - pilot)
            off = abs(rate - plan.churn_rate) / plan.churn_rate
            if attempt == 0 and off > 0.1 and rate > 0:
                replicas = max(1, round(replicas * plan.churn_rate / rate))
                await target.stop()
                continue
            break
        res.churn_workers = replicas
        mark = self.fifo.mark()
        helper = self.helper_cpu(target)
        cpu, wall = self.cpu(target), time.monotonic()
        await asyncio.sleep(plan.churn_window)
        elapsed = time.monotonic() - wall
        res.churn_cpu = (self.cpu(target) - cpu) / elapsed
        res.churn_helper_cpu = (self.helper_cpu(target) - helper) / elapsed
        res.churn_rate = (self.fifo.mark() - mark) / elapsed
        target.check_alive()
        await target.stop()

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        self.fifo = Announcements(os.path.join(self.workdir, "announce.fifo"))
        try:
            phases = (
                ("200 idle workers, then restart latency", self.idle_and_restarts),
                ("start-up", self.startup),
                ("crash churn", self.churn),
            )
            for title, phase in phases:
                for target in self.targets:
                    print(f"{title}: {target.name}", end="", flush=True)
                    began = time.monotonic()
                    try:
                        await phase(target)
                    finally:
                        await target.stop()
                    print(f" ({time.monotonic() - began:.0f} s)", flush=True)
        finally:
            for target in self.targets:
                await target.stop()
            self.fifo.close()


# -- report ----------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


Row = tuple[str, float | None, str, bool]


def rows(plan: Plan, res: Result) -> list[Row]:
    """(label, value, unit, compared) for the table.

    Lower is better for every compared row; the others say what was done.
    """
    mib = 1024 * 1024
    per_exit = res.churn_cpu / res.churn_rate * 1000 if res.churn_rate else None
    pss = res.idle_pss / mib if res.idle_pss is not None else None
    idle = f"{plan.idle_workers} idle"
    return [
        (f"{idle}: CPU, % of a core", res.idle_cpu * 100, "%", True),
        (f"{idle}: RSS", res.idle_rss / mib, "MiB", True),
        (f"{idle}: PSS", pss, "MiB", True),
        ("restart latency p50", percentile(res.restart, 0.5) * 1000, "ms", True),
        ("restart latency p99", percentile(res.restart, 0.99) * 1000, "ms", True),
        (f"start-up: first of {plan.startup_workers} running",
         res.first_worker, "s", True),
        (f"start-up: all {plan.startup_workers} running", res.startup, "s", True),
        ("churn: CPU, % of a core", res.churn_cpu * 100, "%", True),
        ("churn: CPU per exit", per_exit, "ms", True),
        ("churn: exits a second achieved", res.churn_rate, "/s", False),
        ("churn: workers in the pool", res.churn_workers, "", False),
    ]


def ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None:
        return "n/a"
    if theirs == 0:
        return "n/a" if ours else "1.00x"
    return f"{ours / theirs:.2f}x"


def table(plan: Plan, results: dict[str, Result]) -> str:
    names = list(results)
    data = {name: rows(plan, results[name]) for name in names}
    header = f"{'':36}" + "".join(f"{n:>14}" for n in names)
    lines = [header + f"{'M/circus':>10}{'M/superv.':>11}"]
    for i, (label, _, unit, compared) in enumerate(data[names[0]]):
        values = {n: data[n][i][1] for n in names}
        cells = "".join(
            f"{'n/a':>14}" if v is None else f"{v:>10.2f} {unit:<3}"
            for v in values.values()
        )
        line = f"{label:36}{cells}"
        mono = values.get("monoceros")
        if compared:
            line += f"{ratio(mono, values.get('circus')):>10}"
            line += f"{ratio(mono, values.get('supervisord')):>11}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    version = sys.version.split()[0]
    return f"{os.cpu_count()} CPUs ({model}), Python {version}"


# -- entry point ---------------------------------------------------------------


async def main(plan: Plan) -> int:
    venv = peer_venv(lambda text: print(text, flush=True))
    run_dir = tempfile.mkdtemp(prefix="mob-")
    marker = f"{ENV_MARKER}={run_dir}"
    env = {ENV_MARKER: run_dir}
    targets: list[Target] = [
        MonocerosTarget(env=env),
        CircusTarget(env=env, venv=venv),
        SupervisordTarget(env=env, venv=venv),
    ]
    bench = Bench(plan, run_dir, targets)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    print(f"Supervisor overhead: {machine()}")
    for target in targets:
        print(f"  {target.describe()}")
    try:
        await bench.run()
    finally:
        leftovers = proc.kill_tagged(marker.encode())
        if leftovers:
            print(f"killed {leftovers} processes left behind")
        shutil.rmtree(run_dir, ignore_errors=True)
    print()
    print(table(plan, bench.results))
    for name, res in bench.results.items():
        if res.churn_helper_cpu:
            print(f"note ({name}): its helpers used {res.churn_helper_cpu * 100:.2f}"
                  "% of a core of the churn figure")
        for note in res.notes:
            print(f"note ({name}): {note}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args()
    try:
        sys.exit(asyncio.run(main(QUICK if args.quick else Plan())))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; every process started was stopped", file=sys.stderr)
        sys.exit(130)
    except RuntimeError as exc:  # a supervisor died or missed a deadline
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
