"""Prometheus metrics, with the original Go Monoceros's names and labels.

Each Supervisor owns one registry, so several can live in one process (tests)
without colliding. Per-worker process figures are read at scrape time by a
collector, from the processes alive at that moment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from monoceros import __version__

NS = "monoceros"

# The `_created` series double every counter's output for no use here.
disable_created_metrics()


@dataclass(frozen=True)
class ProcessSample:
    pool: str
    worker: str
    pid: int


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.restarts = Counter(
            "restarts",
            "Times a worker process was restarted, by pool and worker type "
            "(worker or proxy)",
            ["pool", "worker_type"],
            namespace=NS,
            subsystem="workerpool",
            registry=r,
        )
        self.restart_reasons = Counter(
            "restart_reasons",
            "Restarts by reason: crash (unexpected exit), recycle (a limit), "
            "manual (SIGHUP, admin API)",
            ["pool", "worker_type", "reason"],
            namespace=NS,
            subsystem="workerpool",
            registry=r,
        )
        self.ready_workers = Gauge(
            "ready_workers",
            "Workers that passed readiness (in proxy mode: in Envoy's "
            "endpoint set)",
            ["pool"],
            namespace=NS,
            subsystem="workerpool",
            registry=r,
        )
        self.sigkill = Counter(
            "sigkill",
            "Times a worker outlived its signal_timeout after SIGTERM and its "
            "process group was sent SIGKILL",
            ["pool"],
            namespace=NS,
            subsystem="workerpool",
            registry=r,
        )
        self.limit_events = Counter(
            "limits_events",
            "Times a limit recycled a worker (limit_event: lifespan, memory, "
            "health)",
            ["pool", "limit_event"],
            namespace=NS,
            subsystem="workerpool",
            registry=r,
        )
        self.worker_state = Gauge(
            "worker_state",
            "Workers in each lifecycle state",
            ["pool", "state"],
            namespace=NS,
            subsystem="workerpool",
            registry=r,
        )
        self.failed_json = Counter(
            "failed_to_parse_log_json",
            "Worker output lines that began with '{' but were not a JSON "
            "object; they are forwarded wrapped as text",
            namespace=NS,
            subsystem="workerpool",
            registry=r,
        )
        self.orphans_reaped = Counter(
            "orphans_reaped",
            "Descendants of workers that outlived them and were reaped by "
            "Monoceros as a child subreaper",
            namespace=NS,
            subsystem="supervisor",
            registry=r,
        )
        self.sigterm_received = Gauge(
            "sigterm_received",
            "1 once Monoceros has been asked to stop (SIGTERM or SIGINT)",
            namespace=NS,
            subsystem="supervisor",
            registry=r,
        )
        self.proxy_mode = Gauge(
            "proxy_mode",
            "1 if any pool runs in proxy mode behind Envoy",
            namespace=NS,
            subsystem="supervisor",
            registry=r,
        )
        self.pool_healthy = Gauge(
            "healthy",
            "1 while the pool has at least desired_healthy_percentage of its "
            "workers running",
            ["pool"],
            namespace=NS,
            subsystem="workerpool",
            registry=r,
        )
        self.reloads = Counter(
            "reload",
            "Configuration reloads (SIGHUP, POST /reload), by result: applied "
            "or rejected (an invalid file; nothing changed)",
            ["result"],
            namespace=NS,
            subsystem="config",
            registry=r,
        )
        self.log_dropped = Counter(
            "log_lines_dropped",
            "Log lines dropped because Monoceros's own output was blocked",
            namespace=NS,
            registry=r,
        )
        Info("build", "Monoceros build information", namespace=NS, registry=r).info(
            {"version": __version__}
        )

    def add_process_source(
        self, source: Callable[[], Iterable[ProcessSample]]
    ) -> None:
        self.registry.register(ProcessCollector(source))


class ProcessCollector(Collector):
    """Per-worker CPU, memory, file descriptors and start time, at scrape time."""

    prefix = f"{NS}_workerpool_process"

    def __init__(self, source: Callable[[], Iterable[ProcessSample]]):
        self._source = source

    def describe(self) -> list:
        return []  # samples vary with the live workers: no fixed description

    def collect(self) -> Iterable:
        labels = ["pool", "worker"]
        p = self.prefix
        cpu = CounterMetricFamily(
            f"{p}_cpu_seconds", "User and system CPU time of the worker", labels=labels
        )
        rss = GaugeMetricFamily(
            f"{p}_resident_memory_bytes", "Resident memory of the worker",
            labels=labels,
        )
        vms = GaugeMetricFamily(
            f"{p}_virtual_memory_bytes", "Virtual memory of the worker", labels=labels
        )
        fds = GaugeMetricFamily(
            f"{p}_open_fds", "Open file descriptors of the worker", labels=labels
        )
        start = GaugeMetricFamily(
            f"{p}_start_time_seconds", "Start time of the worker, in seconds "
            "since the epoch", labels=labels,
        )
        for sample in self._source():
            try:
                proc = psutil.Process(sample.pid)
                with proc.oneshot():
                    times = proc.cpu_times()
                    mem = proc.memory_info()
                    nfds = proc.num_fds()
                    created = proc.create_time()
            except (psutil.Error, OSError):
                continue  # exited between listing and reading
            values = [sample.pool, sample.worker]
            cpu.add_metric(values, times.user + times.system)
            rss.add_metric(values, mem.rss)
            vms.add_metric(values, mem.vms)
            fds.add_metric(values, nfds)
            start.add_metric(values, created)
        return [cpu, rss, vms, fds, start]
