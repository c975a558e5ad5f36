"""Prometheus metrics of the xDS server, all under ``monoceros_xds_``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Push-to-ACK over a Unix socket is a millisecond or so (0.7 ms median
# measured with Envoy 1.40); a second means something is stuck.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)


class XdsMetrics:
    """The server's metrics, registered on the registry given (or a private one,
    so that a server built without one still counts and can be read)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.streams = Gauge(
            "monoceros_xds_streams",
            "Open ADS streams, by protocol variant (sotw, delta).",
            ["variant"],
            registry=self.registry,
        )
        self.responses = Counter(
            "monoceros_xds_responses",
            "Discovery responses sent, by resource type and variant.",
            ["type", "variant"],
            registry=self.registry,
        )
        self.acks = Counter(
            "monoceros_xds_acks",
            "Responses ACKed by clients, by resource type.",
            ["type"],
            registry=self.registry,
        )
        self.nacks = Counter(
            "monoceros_xds_nacks",
            "Responses NACKed (rejected) by clients, by resource type.",
            ["type"],
            registry=self.registry,
        )
        self.push_ack_seconds = Histogram(
            "monoceros_xds_push_ack_seconds",
            "Time from writing a response to receiving its ACK or NACK.",
            ["type"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.refused = Counter(
            "monoceros_xds_streams_refused",
            "Streams refused for an invalid request (no node, no type URL).",
            registry=self.registry,
        )
        for variant in ("sotw", "delta"):
            self.streams.labels(variant=variant)
