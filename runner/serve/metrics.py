"""Prometheus metrics of the depth server (one registry per server, served at /metrics)."""

from __future__ import annotations

import collections
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
RATE_WINDOW = 10.0  # seconds over which images_per_second is computed


class ServeMetrics:
    """Queue depth, batch sizes, latency, images/s, rejections, readiness."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("spatialforge_serve_queue_depth", "Requests admitted and not yet answered by the model", registry=r)
        self.batch_size = Histogram("spatialforge_serve_batch_size", "Images per forward batch", buckets=_BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("spatialforge_serve_batch_seconds", "Model time per batch (forward + upsampling)",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("spatialforge_serve_queue_wait_seconds", "Oldest request's wait before its batch ran",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("spatialforge_serve_request_seconds", "Depth request latency, body received to answer",
                                 ["outcome"], buckets=_LATENCY_BUCKETS, registry=r)
        self.images = Counter("spatialforge_serve_images", "Images through the model", registry=r)
        self.images_per_second = Gauge("spatialforge_serve_images_per_second",
                                       f"Images through the model per second over the last {RATE_WINDOW:.0f} s", registry=r)
        self.rejected = Counter("spatialforge_serve_rejected", "Requests refused", ["reason"], registry=r)
        self.ready = Gauge("spatialforge_serve_ready", "1 once the model is loaded and warmed up", registry=r)
        self.batch_runs = Counter("spatialforge_serve_batch_runs", "Handed-off DepthBatches (POST /v1/batches) by "
                                  "what the server did: started, repeated (answered from the first run), recovered (answered "
                                  "from the manifest of a run before a restart), expired, fenced (ran, published nothing: "
                                  "the Job's claim or the deadline came first)",
                                  ["action"], registry=r)
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self.images_per_second.set_function(self._rate)

    def batch(self, size: int, seconds: float, waited: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.queue_wait.observe(waited)
        self.images.inc(size)
        self._recent.append((time.monotonic(), size))

    def _rate(self) -> float:
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - RATE_WINDOW:
            self._recent.popleft()
        return sum(n for _, n in self._recent) / RATE_WINDOW
