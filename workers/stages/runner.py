"""Run one pipeline stage as a faust worker until SIGTERM / Ctrl-C (what every worker process does).

Stages are looked up in `STAGE_BUILDERS`: name -> "module:function", the function taking a
`WorkerContext`, registering its agents on `ctx.app` and returning an object with
`health() -> dict`. `register_stage` adds one (e.g. a custom stage) before `run_worker` runs.

Configuration comes only from `EMOSTREAM_*` environment variables (`schemas.settings.Settings`).
"""

import logging
import sys
from typing import Any, Protocol

from emostream.plugins.importing import import_target
from emostream.workers.runtime.stage_names import StageName

__all__ = ["STAGE_BUILDERS", "Stage", "register_stage", "run_worker"]

STAGE_BUILDERS: dict[str, str] = {
    StageName.VAD: "emostream.workers.stages.vad:build",
    StageName.INFERENCE: "emostream.workers.stages.inference:build",
    StageName.PLUGINS: "emostream.workers.stages.plugin_runner:build",
}


class Stage(Protocol):
    def health(self) -> dict[str, object]: ...


def register_stage(name: str, target: str) -> None:
    """Add a stage: `target` is "module:function" with function(WorkerContext) -> Stage."""
    STAGE_BUILDERS[name] = target


def run_worker(stage: str, *, create_topics: bool = True) -> int:
    import faust
    from emostream.model.registry import LOAD_ERRORS
    from emostream.schemas.settings import Settings
    from emostream.workers.runtime.app import create_worker_context
    from emostream.workers.runtime.metrics import MetricsServer
    from emostream.workers.runtime.topics import ensure_topics, stack_topics

    if stage not in STAGE_BUILDERS:
        raise SystemExit(f"unknown stage {stage!r}; use one of {', '.join(sorted(STAGE_BUILDERS))}")
    settings = Settings()
    logging.basicConfig(
        level=settings.observability.log_level,
        format=f"%(asctime)s %(levelname)s {stage} %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if create_topics:
        ensure_topics(settings.kafka, stack_topics(settings))
    ctx = create_worker_context(settings, stage=stage)
    try:
        built: Stage = import_target(STAGE_BUILDERS[stage])(ctx)
    except LOAD_ERRORS as error:  # a model setting that cannot work: one log line and exit 2, not a traceback
        logging.getLogger(__name__).error("the %s worker cannot start: %s", stage, error)
        return 2
    liveness = ctx.liveness
    joined = {"done": False}

    async def _on_assigned(*_args: Any, **_kwargs: Any) -> None:
        joined["done"] = True

    ctx.app.on_partitions_assigned.connect(_on_assigned)
    server = MetricsServer(
        ctx.metrics,
        host=settings.observability.metrics_host,
        port=settings.observability.metrics_port,
        health=lambda: {
            "redis": "up" if ctx.store.available else "down",
            "partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in ctx.consumer.assignment()),
            **built.health(),
            **ctx.health,
        },
        liveness=liveness.problems,
        joined=lambda: joined["done"],
    )

    @ctx.app.task
    async def _start_services() -> None:
        await server.start()
        server.ready = True

    ctx.app.task(ctx.store.run_recovery)
    worker = faust.Worker(ctx.app, loglevel=settings.observability.log_level, quiet=True)
    worker.execute_from_commandline()  # returns via SystemExit when stopped
    return 0
