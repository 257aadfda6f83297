"""Prometheus metrics: what operators graph and alert on. Served at /metrics in pod mode and, when
METRICS_PORT is set, on a port of its own in serverless mode. One registry per worker, so tests
and several workers in one process never share counters."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
    start_http_server,
)

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self, queue_depth: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.model = Info("vision_worker_model", "The served model", registry=registry)
        self.jobs = Counter(
            "vision_worker_jobs",
            "Jobs by outcome (completed, failed)",
            ["outcome"],
            registry=registry,
        )
        self.images = Counter(
            "vision_worker_images",
            "Images by outcome: ok or an error code",
            ["outcome"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "vision_worker_batch_size",
            "Items per forward pass",
            buckets=_BATCH_SIZES,
            registry=registry,
        )
        self.queue_seconds = Histogram(
            "vision_worker_queue_seconds",
            "Time an item waited in the batcher",
            buckets=_SECONDS,
            registry=registry,
        )
        self.model_seconds = Histogram(
            "vision_worker_model_seconds",
            "Time of one forward pass",
            buckets=_SECONDS,
            registry=registry,
        )
        self.job_seconds = Histogram(
            "vision_worker_job_seconds",
            "End-to-end time of one job",
            buckets=_SECONDS,
            registry=registry,
        )
        depth = Gauge(
            "vision_worker_queue_depth", "Items waiting in the batcher", registry=registry
        )
        depth.set_function(queue_depth)

    def describe_model(self, **labels: str) -> None:
        self.model.info(labels)

    def batch_ran(self, size: int, waited_s: Sequence[float], model_s: float) -> None:
        self.batch_size.observe(size)
        self.model_seconds.observe(model_s)
        for seconds in waited_s:
            self.queue_seconds.observe(seconds)

    def job_done(self, output: dict, seconds: float) -> None:
        failed = "error" in output  # a failed job; per-image errors sit in "results"
        self.jobs.labels("failed" if failed else "completed").inc()
        self.job_seconds.observe(seconds)
        for result in output.get("results", []):
            error = result.get("error") if isinstance(result, dict) else None
            self.images.labels(error["code"] if error else "ok").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, port: int) -> None:
        """Serverless mode: a metrics endpoint on its own port (RunPod's HTTP port stays free)."""
        start_http_server(port, registry=self.registry)
