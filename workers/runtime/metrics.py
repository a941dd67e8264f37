"""Prometheus metrics, liveness and readiness of a worker process (one HTTP server per worker).

- `GET /metrics`: Prometheus text format.
- `GET /healthz` (liveness): 200 with `{"status": "ok" | "degraded" | "starting", ...}` while the
  worker does its job (Redis down is "degraded", still 200: results keep flowing); 503 with
  `"status": "failing"` and `problems` when an agent or stage task stopped, or the consumer took no
  record for `observability.liveness_stall_s` while records wait (see `workers.runtime.liveness`).
  Restart the worker when it fails.
- `GET /readyz` (readiness): 200 once the worker started and its consumer joined the group
  (partitions assigned, possibly none), 503 before, and while liveness fails.

The server listens on `observability.metrics_host:metrics_port` (default 127.0.0.1: set
`EMOSTREAM_OBSERVABILITY__METRICS_HOST=0.0.0.0` in a container); port 0 picks a free one, logged
as `metrics on http://HOST:PORT`.
"""

import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["MetricsServer", "WorkerMetrics"]

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class WorkerMetrics:
    """Every metric of a worker, on its own registry (so tests can build several in one process)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.registry = CollectorRegistry()
        r = self.registry
        self.chunks = Counter(
            "emostream_chunks",
            "audio chunks by outcome (processed, duplicate, late, lost)",
            ["outcome"],
            registry=r,
        )
        self.segments = Counter(
            "emostream_segments", "speech segments emitted by the VAD stage", registry=r
        )
        self.results = Counter(
            "emostream_results",
            "results by outcome (inferred, cache_hit, duplicate)",
            ["outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "emostream_dead_letters", "records sent to the dead-letter topic", registry=r
        )
        self.dead_letter_failures = Counter(
            "emostream_dead_letter_failures",
            "dead letters that could not be sent (logged; the record is acknowledged or replayed)",
            registry=r,
        )
        self.gaps = Counter(
            "emostream_gaps", "sequence gaps by handling (filled, closed)", ["handling"], registry=r
        )
        self.checkpoints = Counter(
            "emostream_checkpoint_writes",
            "VAD resume checkpoints by outcome (stored, failed)",
            ["outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "emostream_latency_seconds",
            "wall-clock latency by part (vad, queue, inference, total)",
            ["part"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "emostream_batch_size", "inference micro-batch sizes", buckets=BATCH_BUCKETS, registry=r
        )
        self.active_streams = Gauge(
            "emostream_active_streams", "streams with state in this worker", registry=r
        )
        self.held_chunks = Gauge(
            "emostream_held_chunks", "chunks not yet acknowledged (behind a checkpoint)", registry=r
        )
        self.redis_up = Gauge("emostream_redis_up", "1 while Redis answers", registry=r)
        self.redis_backlog = Gauge(
            "emostream_redis_backlog", "results waiting for Redis to come back", registry=r
        )
        self.redis_up.set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """aiohttp server for /metrics and /healthz; `health` returns extra JSON fields for /healthz."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        *,
        host: str,
        port: int,
        health: Callable[[], dict[str, Any]],
        liveness: Callable[[], list[str]] = list,
        joined: Callable[[], bool] = lambda: True,
    ) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self.health = health
        self.liveness = liveness  # problems; empty while live
        self.joined = joined  # the consumer joined its group
        self.ready = False  # started
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr,attr-defined]
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.warning(
            "%s worker: metrics on http://%s:%d (/metrics, /healthz, /readyz)",
            self.metrics.stage,
            self.host,
            self.port,
        )
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _healthz(self, _request: web.Request) -> web.Response:
        """Liveness: fails only when restarting the worker is the remedy."""
        details = {"stage": self.metrics.stage, **self.health()}
        problems = self.liveness()
        if problems:
            return _json(503, {"status": "failing", "problems": problems, **details})
        if not self.ready:
            return _json(200, {"status": "starting", **details})
        status = "ok" if details.get("redis", "up") == "up" else "degraded"
        return _json(200, {"status": status, **details})

    async def _readyz(self, _request: web.Request) -> web.Response:
        """Readiness: started, joined the consumer group, and live."""
        details = {"stage": self.metrics.stage, **self.health()}
        problems = self.liveness()
        if problems:
            return _json(503, {"status": "failing", "problems": problems, **details})
        if not (self.ready and self.joined()):
            return _json(503, {"status": "starting", **details})
        return _json(200, {"status": "ready", **details})


def _json(status: int, document: dict[str, Any]) -> web.Response:
    return web.Response(status=status, text=json.dumps(document), content_type="application/json")
