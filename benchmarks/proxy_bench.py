"""Proxy-mode benchmarks: recycles under load, propagation, skewed load.

Run with ``python -m benchmarks.proxy_bench`` (``--quick`` for a short run).
Every figure comes from real ``monoceros`` processes started for the run,
with ``monoceros-processbin`` workers and, in proxy mode, a real Envoy:

1. failed requests while every worker of a 4-worker pool is replaced once
   by a SIGHUP rolling restart, proxy mode (Envoy, LEAST_REQUEST) against
   supervisor mode (the same workers sharing one port with SO_REUSEPORT),
   with keep-alive clients and with a new connection per request;
2. how long after Monoceros logs "worker ready" for a worker restarted after
   a SIGKILL its first request through Envoy is answered, next to a floor
   measured at the same instants: the wait for the next answer of a worker
   already routed to, which is what the load's own rate allows;
3. latency and the spread of CPU seconds across workers under a load where
   one request in ten costs 50 times more than the others, for SO_REUSEPORT,
   LEAST_REQUEST and ROUND_ROBIN.

The machine has few cores and the load generator competes with the workers
and Envoy for them, so every load is paced to a modest rate (printed with
each table) that leaves the CPU partly idle.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_port, free_port_range
from tests.harness import Monoceros, processbin_exec, venv_env
from tests.load import Load, Tally

WORKERS = 4
POOL = "web"

# Recycle runs: 8 clients, each paced to 50 requests a second.
RECYCLE_CLIENTS = 8
RECYCLE_RATE = 50.0

# Propagation: 4 keep-alive clients at 100 requests a second each.
PROPAGATION_CLIENTS = 4
PROPAGATION_RATE = 100.0

# Skewed load: 8 keep-alive clients at 16 requests a second each; one
# request in ten burns 50 ms of CPU, the others 1 ms (5.9 ms on average).
SKEW_CLIENTS = 8
SKEW_RATE = 16.0
SKEW_CHEAP_MS = 1
SKEW_DEAR_MS = 50
SKEW_DEAR_SHARE = 0.1


class BenchError(Exception):
    """A step of the benchmark did not happen in time."""


@dataclass(frozen=True)
class Plan:
    recycle_runs: int
    propagation_samples: int
    skew_rounds: int
    skew_seconds: float
    warmup: float


DEFAULT = Plan(recycle_runs=3, propagation_samples=24, skew_rounds=4,
               skew_seconds=6.0, warmup=1.0)
QUICK = Plan(recycle_runs=1, propagation_samples=8, skew_rounds=1,
             skew_seconds=5.0, warmup=1.0)


def wait_until(predicate: Callable[[], object], timeout: float, what: str):
    """Poll `predicate` until it is truthy; fail naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.01)


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# -- starting Monoceros -----------------------------------------------------------

@dataclass
class Setup:
    """One running Monoceros with one pool, and where clients reach it."""

    monoceros: Monoceros
    url: str
    label: str


def worker_args() -> list[str]:
    # One log line per worker: the benchmark measures requests, not logging.
    return ["--log-interval", "0", "--log-count", "1"]


def proxy_pool(lb: str) -> tuple[dict, int]:
    listener = free_port()
    pool = {
        "name": POOL,
        "replicas": WORKERS,
        "exec": processbin_exec(),
        "args": worker_args(),
        "signal_timeout": "5s",
        "max_restarts": 1000,
        "restart_backoff": {"initial": "50ms", "max": "50ms"},
        "server": {
            "port_arg": {
                "name": "--port",
                "value_template": "{{.Port}}",
                "start_port": free_port_range(2 * WORKERS),
            },
            "health_check_path": "/health",
            "load_balancer_algorithm": lb,
            "admin_port": free_port(),
            "listener_address": "127.0.0.1",
            "listener_port": listener,
            "signal_timeout": "5s",
        },
    }
    return pool, listener


def reuseport_pool() -> tuple[dict, int]:
    port = free_port()
    pool = {
        "name": POOL,
        "replicas": WORKERS,
        "exec": processbin_exec(),
        "args": [*worker_args(), "--port", str(port), "--reuse-port"],
        "signal_timeout": "5s",
        # Ready once it has stayed up this long: time enough for the
        # interpreter to start and bind the port before its predecessor
        # is stopped (supervisor mode has no probe).
        "startup_wait_time": "1s",
    }
    return pool, port


class Stack:
    """Every Monoceros started by the run, each in its own directory, all
    stopped by `close` (SIGTERM, then SIGKILL to its session)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mpb-"))
        self.started: list[Monoceros] = []

    def start(self, mode: str) -> Setup:
        """`mode`: "reuseport", or a load balancer algorithm for proxy mode."""
        workdir = self.root / f"run{len(self.started)}"
        workdir.mkdir()
        if mode == "reuseport":
            pool, port = reuseport_pool()
            label = "SO_REUSEPORT"
        else:
            pool, port = proxy_pool(mode)
            label = mode
        config = {
            "xds": {"socket": str(workdir / "xds.sock")},
            "supervisor": {"workers": [pool]},
        }
        monoceros = Monoceros(workdir, config)
        self.started.append(monoceros)
        setup = Setup(monoceros, f"http://127.0.0.1:{port}/", label)
        wait_until(
            lambda: len(monoceros.ready_workers()) == WORKERS or exited(monoceros),
            60, f"{WORKERS} ready workers ({label})",
        )
        if exited(monoceros):
            raise BenchError(f"monoceros exited ({label}):\n{tail(monoceros)}")
        wait_serving(setup)
        return setup

    def stop(self, setup: Setup) -> None:
        setup.monoceros.close()

    def close(self) -> None:
        for monoceros in self.started:
            try:
                monoceros.close()
            except Exception as exc:  # keep stopping the others
                print(f"could not stop monoceros {monoceros.proc.pid}: {exc}")
        shutil.rmtree(self.root, ignore_errors=True)


def exited(monoceros: Monoceros) -> bool:
    return monoceros.proc.poll() is not None


def tail(monoceros: Monoceros, lines: int = 15) -> str:
    return b"\n".join(monoceros.stderr().splitlines()[-lines:]).decode(
        errors="replace"
    )


def wait_serving(setup: Setup) -> None:
    """Until every worker has answered a client through the front door."""
    seen: set[str] = set()

    def answered() -> bool:
        try:
            with urllib.request.urlopen(setup.url, timeout=2) as resp:
                seen.add(resp.headers["X-Worker-Id"])
        except OSError:
            return False
        return len(seen) >= WORKERS

    # SO_REUSEPORT spreads new connections by a hash of the client's port,
    # so every worker shows up within a few dozen fresh connections.
    wait_until(answered, 30, f"every worker to answer on {setup.url}")


# -- 1. recycle under load --------------------------------------------------------

@dataclass
class RecycleRun:
    requests: int
    failed: int
    seconds: float
    tally: Tally

    @property
    def rate(self) -> float:
        return self.failed / self.requests if self.requests else float("nan")


def recycle_once(setup: Setup, keepalive: bool, warmup: float) -> RecycleRun:
    """SIGHUP under load; count every request from the load's start until
    a second after the last old worker is gone."""
    m = setup.monoceros
    before = {w["pid"] for w in m.ready_workers()}
    load = Load(setup.url, concurrency=RECYCLE_CLIENTS, keepalive=keepalive,
                max_seconds=120, rate=RECYCLE_RATE)
    with load:
        time.sleep(warmup)  # the load's own lead-in, not a wait on an event
        started = time.monotonic()
        m.signal(signal.SIGHUP)

        def replaced() -> bool:
            workers = m.workers()
            ready = [w for w in workers if w["state"] == "ready"]
            pids = {w["pid"] for w in workers}
            return len(ready) == WORKERS and not before & pids

        wait_until(replaced, 90, f"the rolling restart to finish ({setup.label})")
        seconds = time.monotonic() - started
        time.sleep(1.0)  # a tail of load after the last old worker left
    tally = load.tally
    return RecycleRun(tally.total, tally.failed, seconds, tally)


def bench_recycle(stack: Stack, plan: Plan) -> dict[tuple[str, bool], list]:
    """Both modes run side by side, idle but for the one under load, and
    their runs alternate, so that other work on the machine falls on both."""
    setups = {mode: stack.start(mode) for mode in ("reuseport", "LEAST_REQUEST")}
    results: dict[tuple[str, bool], list[RecycleRun]] = {}
    for keepalive in (True, False):
        for _ in range(plan.recycle_runs):
            for mode, setup in setups.items():
                run = recycle_once(setup, keepalive, plan.warmup)
                results.setdefault((mode, keepalive), []).append(run)
                progress(f"recycle {setup.label} keepalive={keepalive}: "
                         f"{run.failed}/{run.requests} failed")
    for setup in setups.values():
        stack.stop(setup)
    return results


def print_recycle(results: dict, plan: Plan) -> None:
    print(f"\n1. Recycle under load: SIGHUP rolling restart of {WORKERS} workers, "
          f"{RECYCLE_CLIENTS} clients x {RECYCLE_RATE:.0f} req/s, "
          f"{plan.recycle_runs} run(s) each")
    print("   counted: every request from the SIGHUP's lead-in "
          "to 1 s after the last old worker is gone")
    head = f"{'':13}{'run':>4}  {'supervisor (SO_REUSEPORT)':>29}  "
    head += f"{'proxy (Envoy, LEAST_REQUEST)':>30}  {'ratio':>7}"
    print(head)
    print(f"{'':19}{'requests':>9} {'failed':>7} {'rate':>9} {'restart':>5}"
          f"  {'requests':>9} {'failed':>7} {'rate':>9} {'restart':>5}")
    for keepalive in (True, False):
        name = "keep-alive" if keepalive else "new conn/req"
        sup = results[("reuseport", keepalive)]
        prx = results[("LEAST_REQUEST", keepalive)]
        for i, (s, p) in enumerate(zip(sup, prx, strict=True)):
            print(f"{name if i == 0 else '':13}{i + 1:>4}  {recycle_cells(s)}"
                  f"  {recycle_cells(p)}")
        s_total, p_total = total(sup), total(prx)
        print(f"{'':13}{'all':>4}  {recycle_cells(s_total)}  "
              f"{recycle_cells(p_total)}  {ratio(p_total.rate, s_total.rate):>7}")
    for (mode, keepalive), runs in results.items():
        kinds = merge_failures(runs)
        if kinds:
            what = "keep-alive" if keepalive else "new connection per request"
            print(f"   failures, {mode}, {what}: {kinds}")


def recycle_cells(run: RecycleRun) -> str:
    return (f"{run.requests:>9} {run.failed:>7} {run.rate * 100:>8.3f}% "
            f"{run.seconds:>4.1f}s")


def total(runs: list[RecycleRun]) -> RecycleRun:
    return RecycleRun(
        sum(r.requests for r in runs),
        sum(r.failed for r in runs),
        statistics.mean(r.seconds for r in runs),
        Tally(),
    )


def merge_failures(runs: list[RecycleRun]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for run in runs:
        for status, count in run.tally.statuses.items():
            if not 200 <= status < 300:
                kinds[f"HTTP {status}"] = kinds.get(f"HTTP {status}", 0) + count
        for error, count in run.tally.errors.items():
            kinds[error] = kinds.get(error, 0) + count
    return kinds


def ratio(ours: float, base: float) -> str:
    if base == 0:
        return "-" if ours == 0 else "inf"
    return f"{ours / base:.2f}x"


# -- 2. propagation -----------------------------------------------------------

class Arrivals:
    """Wall-clock arrival time of every answer, by the worker pid that gave
    it; called from the load thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_pid: dict[int, list[float]] = {}

    def __call__(self, url: str, status: int, headers, elapsed: float) -> None:
        now = time.time()
        pid = int(headers.get("X-Worker-Pid", 0))
        with self.lock:
            self.by_pid.setdefault(pid, []).append(now)

    def first(self, pid: int) -> float | None:
        with self.lock:
            times = self.by_pid.get(pid)
            return times[0] if times else None

    def next_after(self, pid: int, instant: float) -> float | None:
        with self.lock:
            return next((t for t in self.by_pid.get(pid, ()) if t >= instant), None)


class ReadyLog:
    """Reads Monoceros's JSON log as it grows, for "worker ready" records."""

    def __init__(self, monoceros: Monoceros) -> None:
        self.path = monoceros.stderr_path
        self.offset = 0
        self.ready: dict[int, float] = {}

    def poll(self) -> dict[int, float]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        for line in chunk[:end].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("msg") == "worker ready" and record.get("pid"):
                ts = datetime.datetime.fromisoformat(record["ts"]).timestamp()
                self.ready[record["pid"]] = ts
        return self.ready


def propagation_sample(
    log: ReadyLog, arrivals: Arrivals, workers: list[dict], victim: dict
) -> tuple[float, list[float]]:
    """SIGKILL `victim`; return the delay from its replacement's "worker
    ready" to its first answer, and the floor waits at the same instant."""
    known = set(log.poll())
    os.kill(victim["pid"], signal.SIGKILL)

    def restarted() -> int | None:
        new = set(log.poll()) - known - {victim["pid"]}
        return new.pop() if new else None

    pid = wait_until(restarted, 30, "the killed worker's replacement")
    ready_at = log.ready[pid]
    first = wait_until(lambda: arrivals.first(pid), 30,
                       f"a request answered by pid {pid}")

    # The floor: from the same instant, the next answer of each worker that
    # was routed to all along.
    waits = []
    for other in workers:
        if other["pid"] == victim["pid"]:
            continue
        answered = wait_until(
            lambda o=other: arrivals.next_after(o["pid"], ready_at),
            10, "an answer from a routed worker",
        )
        waits.append(answered - ready_at)
    return first - ready_at, waits


def eds_acks(m: Monoceros) -> tuple[float, float]:
    """Sum and count of EDS push-to-ACK times so far, from /metrics."""
    name = "monoceros_xds_push_ack_seconds"
    return (m.metric(name + "_sum", type="eds") or 0.0,
            m.metric(name + "_count", type="eds") or 0.0)


def bench_propagation(stack: Stack, plan: Plan) -> tuple[list[float], ...]:
    setup = stack.start("LEAST_REQUEST")
    m = setup.monoceros
    acks_before = eds_acks(m)
    arrivals = Arrivals()
    log = ReadyLog(m)
    delays: list[float] = []
    floor: list[float] = []
    load = Load(setup.url, concurrency=PROPAGATION_CLIENTS, max_seconds=300,
                rate=PROPAGATION_RATE, on_response=arrivals)
    with load:
        time.sleep(0.5)  # the load's lead-in
        for n in range(plan.propagation_samples):
            workers = sorted(m.ready_workers(), key=lambda w: w["id"])
            delay, waits = propagation_sample(
                log, arrivals, workers, workers[n % len(workers)]
            )
            delays.append(delay)
            floor.extend(waits)

            # Next sample once all four are ready again.
            wait_until(lambda: len(m.ready_workers()) == WORKERS, 30,
                       f"{WORKERS} ready workers")
            progress(f"propagation sample {n + 1}: {delay * 1000:.1f} ms")
    acks_after = eds_acks(m)
    pushes = acks_after[1] - acks_before[1]
    ack_mean = (acks_after[0] - acks_before[0]) / pushes if pushes else float("nan")
    if load.tally.failed:
        progress(f"propagation load: {load.tally.failed} failed "
                 f"({dict(load.tally.errors)} {dict(load.tally.statuses)})")
    stack.stop(setup)
    return delays, floor, [ack_mean]


def print_propagation(
    delays: list[float], floor: list[float], ack_mean: list[float]
) -> None:
    rate = PROPAGATION_CLIENTS * PROPAGATION_RATE
    print(f"\n2. Propagation: a worker SIGKILLed and restarted, {len(delays)} "
          f"samples, LEAST_REQUEST, {PROPAGATION_CLIENTS} keep-alive clients "
          f"x {PROPAGATION_RATE:.0f} req/s ({rate:.0f} req/s over {WORKERS} "
          f"workers)")
    print("   measured: from the ts of Monoceros's \"worker ready\" record for "
          "the new pid (ms resolution)")
    print("   to the client receiving the first answer carrying that pid in "
          "X-Worker-Pid")
    print("   floor: from the same instant to the next answer of each worker "
          "that was routed all along")
    print(f"{'':16}{'new worker':>12}{'floor':>12}{'ratio':>9}")
    for label, share in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
        ours, base = percentile(delays, share), percentile(floor, share)
        print(f"  {label:14}{ms(ours):>12}{ms(base):>12}{ratio(ours, base):>9}")
    print(f"   EDS push-to-ACK over the same samples (monoceros_xds_push_ack_"
          f"seconds): mean {ms(ack_mean[0])}")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# -- 3. skewed load -----------------------------------------------------------

SKEW_MODES = ("reuseport", "LEAST_REQUEST", "ROUND_ROBIN")


@dataclass
class SkewRun:
    """One balancing mode's windows, pooled."""

    label: str
    cheap: list[float] = field(default_factory=list)
    dear: list[float] = field(default_factory=list)
    # Per window: CPU seconds by worker pid.
    cpu: list[dict[int, float]] = field(default_factory=list)
    failed: int = 0

    def spreads(self) -> list[float]:
        return [max(w.values()) / min(w.values()) if min(w.values()) > 0
                else float("inf") for w in self.cpu]

    def cvs(self) -> list[float]:
        return [statistics.pstdev(w.values()) / statistics.mean(w.values())
                for w in self.cpu]

    def busiest(self) -> list[float]:
        return [max(w.values()) / sum(w.values()) for w in self.cpu]


def cpu_by_worker(m: Monoceros) -> dict[int, float]:
    return {w["pid"]: w["cpu_seconds"] or 0.0 for w in m.ready_workers()}


def skew_window(setup: Setup, run: SkewRun, plan: Plan, seed: int) -> None:
    """One window of skewed load on fresh client connections."""
    m = setup.monoceros
    measuring = threading.Event()
    dear_suffix = f"?work_ms={SKEW_DEAR_MS}"
    chooser = random.Random(seed)  # used by the load thread only
    cheap: list[float] = []
    dear: list[float] = []

    def path_for(n: int) -> str:
        if chooser.random() < SKEW_DEAR_SHARE:
            return dear_suffix
        return f"?work_ms={SKEW_CHEAP_MS}"

    def on_response(url: str, status: int, headers, elapsed: float) -> None:
        if not measuring.is_set() or not 200 <= status < 300:
            return
        (dear if url.endswith(dear_suffix) else cheap).append(elapsed)

    load = Load(setup.url, concurrency=SKEW_CLIENTS, max_seconds=120,
                rate=SKEW_RATE, path_for=path_for, on_response=on_response)
    with load:
        time.sleep(plan.warmup)  # connections made, first requests served
        before = cpu_by_worker(m)
        failed_before = load.snapshot()[1]
        measuring.set()
        time.sleep(plan.skew_seconds)  # the measured window
        measuring.clear()
        after = cpu_by_worker(m)
        failed = load.snapshot()[1] - failed_before

    if set(after) != set(before) or len(after) != WORKERS:
        raise BenchError(f"a worker was replaced during a skew window "
                         f"({setup.label})")
    run.cheap += cheap
    run.dear += dear
    run.cpu.append({pid: after[pid] - before[pid] for pid in after})
    run.failed += failed


def bench_skew(stack: Stack, plan: Plan) -> list[SkewRun]:
    """The three modes run side by side, idle but for the one under load.
    Windows rotate between them, the first mode changing each round, so that
    other work on the machine falls on all three alike; every window opens
    new client connections, so SO_REUSEPORT's spread is drawn again."""
    setups = [stack.start(mode) for mode in SKEW_MODES]
    runs = [SkewRun(setup.label) for setup in setups]
    for round_ in range(plan.skew_rounds):
        for k in range(len(setups)):
            i = (round_ + k) % len(setups)
            skew_window(setups[i], runs[i], plan, seed=round_)
            progress(f"skew round {round_ + 1} {runs[i].label}: CPU s "
                     + " ".join(f"{v:.2f}" for v in runs[i].cpu[-1].values()))
    for setup in setups:
        stack.stop(setup)
    return runs


def print_skew(runs: list[SkewRun], plan: Plan) -> None:
    mean_ms = (1 - SKEW_DEAR_SHARE) * SKEW_CHEAP_MS + SKEW_DEAR_SHARE * SKEW_DEAR_MS
    offered = SKEW_CLIENTS * SKEW_RATE
    print(f"\n3. Skewed load: {SKEW_CLIENTS} keep-alive clients x "
          f"{SKEW_RATE:.0f} req/s ({offered:.0f} req/s), "
          f"{SKEW_DEAR_SHARE:.0%} of requests burn {SKEW_DEAR_MS} ms of CPU, "
          f"the rest {SKEW_CHEAP_MS} ms")
    print(f"   (mean {mean_ms:.1f} ms: about {offered * mean_ms / 1000:.2f} "
          f"of the machine's {os.cpu_count()} cores in the workers), "
          f"{WORKERS} workers; {plan.skew_rounds} window(s) of "
          f"{plan.skew_seconds:.0f} s per mode, interleaved")
    print("   latency: client-side, request sent to body read; CPU: per "
          "window from /workers, then the median (max/min) or mean over windows")
    base = runs[0]
    names = [r.label for r in runs]
    print(f"{'':31}" + "".join(f"{n:>14}" for n in names)
          + "".join(f"{n[:5] + '/' + base.label[:5]:>13}" for n in names[1:]))
    rows = [
        ("requests answered", lambda r: len(r.cheap) + len(r.dear), "{:.0f}"),
        ("failed", lambda r: r.failed, "{:.0f}"),
        (f"p50, {SKEW_CHEAP_MS} ms requests (ms)",
         lambda r: percentile(r.cheap, 0.5) * 1000, "{:.2f}"),
        (f"p99, {SKEW_CHEAP_MS} ms requests (ms)",
         lambda r: percentile(r.cheap, 0.99) * 1000, "{:.2f}"),
        (f"p50, {SKEW_DEAR_MS} ms requests (ms)",
         lambda r: percentile(r.dear, 0.5) * 1000, "{:.2f}"),
        (f"p99, {SKEW_DEAR_MS} ms requests (ms)",
         lambda r: percentile(r.dear, 0.99) * 1000, "{:.2f}"),
        ("p50, all requests (ms)",
         lambda r: percentile(r.cheap + r.dear, 0.5) * 1000, "{:.2f}"),
        ("p99, all requests (ms)",
         lambda r: percentile(r.cheap + r.dear, 0.99) * 1000, "{:.2f}"),
        ("worker CPU, max/min (median)",
         lambda r: statistics.median(r.spreads()), "{:.2f}"),
        ("worker CPU, coeff. of var.",
         lambda r: statistics.mean(r.cvs()), "{:.3f}"),
        ("busiest worker's CPU share",
         lambda r: statistics.mean(r.busiest()) * 100, "{:.1f}%"),
    ]
    for label, value, fmt in rows:
        cells = "".join(f"{fmt.format(value(r)):>14}" for r in runs)
        ratios = "".join(f"{ratio(value(r), value(base)):>13}" for r in runs[1:])
        print(f"  {label:29}{cells}{ratios}")
    for r in runs:
        windows = "; ".join(
            " ".join(f"{cpu:.2f}" for cpu in sorted(w.values(), reverse=True))
            for w in r.cpu
        )
        print(f"   {r.label}: CPU s per worker, per window: {windows}")


# -- report -------------------------------------------------------------------

def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def machine() -> list[str]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    envoy = shutil.which("envoy", path=venv_env()["PATH"])
    version = "not found"
    if envoy:
        out = subprocess.run([envoy, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
        found = re.search(r"version: \S+?/(\d+\.\d+\.\d+)", out)
        version = found.group(1) if found else out.strip()
    try:
        migrate = Path("/proc/sys/net/ipv4/tcp_migrate_req").read_text().strip()
    except OSError:
        migrate = "absent"
    return [
        f"cores (nproc): {os.cpu_count()}, CPU: {model}",
        f"Python {platform.python_version()}, Envoy {version}, "
        f"Linux {platform.release()}, net.ipv4.tcp_migrate_req={migrate}",
    ]


def interrupt(signum: int, frame) -> None:
    # A SIGTERM stops the run like Ctrl-C does: through the finally below.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.proxy_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true",
                        help="one recycle run per case, fewer samples, "
                             "shorter skew windows")
    parser.add_argument("--only", choices=("recycle", "propagation", "skew"),
                        action="append", help="run only this part (repeatable)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else DEFAULT
    parts = args.only or ["recycle", "propagation", "skew"]
    # Ctrl-C and SIGTERM both end the run through the `finally` below, even
    # when the shell started it with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)

    print("Proxy-mode benchmark" + (" (quick)" if args.quick else ""))
    for line in machine():
        print("  " + line)
    started = time.monotonic()
    stack = Stack()
    benches = {
        "recycle": lambda: print_recycle(bench_recycle(stack, plan), plan),
        "propagation": lambda: print_propagation(*bench_propagation(stack, plan)),
        "skew": lambda: print_skew(bench_skew(stack, plan), plan),
    }
    try:
        for part in parts:
            before = load_average()
            benches[part]()
            # Other work on the machine shows in its load average.
            print(f"   load average (1, 5, 15 min) before: {before}, "
                  f"after: {load_average()}")
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: stopping everything started", file=sys.stderr)
        return 130
    finally:
        stack.close()
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
