"""`emostream worker STAGE`: run one pipeline stage (a faust worker) until SIGTERM / Ctrl-C.

Stages are looked up in STAGES: name -> "module:function", the function taking a `WorkerContext`,
registering its agents on `ctx.app` and returning an object with `health() -> dict`. A new stage
(e.g. the plugin runner) adds one entry here, or calls `register_stage` before `main` runs.

Configuration comes only from `EMOSTREAM_*` environment variables (`schemas.settings.Settings`).
"""

import argparse
import importlib
import logging
import sys
from typing import Any, Protocol

__all__ = ["STAGES", "register", "register_stage", "run_worker"]

STAGES: dict[str, str] = {
    "vad": "emostream.workers.vad_stage:build",
    "inference": "emostream.workers.inference_stage:build",
    "plugins": "emostream.workers.plugin_stage:build",
}


class Stage(Protocol):
    def health(self) -> dict[str, object]: ...


def register_stage(name: str, target: str) -> None:
    """Add a stage: `target` is "module:function" with function(WorkerContext) -> Stage."""
    STAGES[name] = target


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "worker",
        help="run one pipeline stage as a Kafka consumer-group worker",
        description="Run one pipeline stage. Settings come from EMOSTREAM_* environment variables.",
    )
    parser.add_argument("stage", choices=sorted(STAGES), help="which stage this worker runs")
    parser.add_argument(
        "--no-create-topics",
        action="store_true",
        help="do not create missing topics at start (they must exist with their partition counts)",
    )
    parser.set_defaults(handler=_handle)


def _load_builder(stage: str) -> Any:
    module_name, _, function_name = STAGES[stage].partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def run_worker(stage: str, *, create_topics: bool = True) -> int:
    import faust
    from emostream.schemas.settings import Settings
    from emostream.workers.app import create_worker_context
    from emostream.workers.metrics import MetricsServer
    from emostream.workers.topics import ensure_topics, stack_topics

    settings = Settings()
    logging.basicConfig(
        level=settings.observability.log_level,
        format=f"%(asctime)s %(levelname)s {stage} %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if create_topics:
        ensure_topics(settings.kafka, stack_topics(settings))
    ctx = create_worker_context(settings, stage=stage)
    built: Stage = _load_builder(stage)(ctx)
    server = MetricsServer(
        ctx.metrics,
        host=settings.observability.metrics_host,
        port=settings.observability.metrics_port,
        health=lambda: {
            "redis": "up" if ctx.store.available else "down",
            "partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in _assignment(ctx.app)),
            **built.health(),
            **ctx.health,
        },
    )

    @ctx.app.task
    async def _start_services() -> None:
        await server.start()
        server.ready = True

    ctx.app.task(ctx.store.run_recovery)
    worker = faust.Worker(ctx.app, loglevel=settings.observability.log_level, quiet=True)
    worker.execute_from_commandline()  # returns via SystemExit when stopped
    return 0


def _assignment(app: Any) -> set[Any]:
    try:
        return set(app.consumer.assignment())
    except (AttributeError, RuntimeError):  # consumer not started yet
        return set()


def _handle(args: argparse.Namespace) -> int:
    return run_worker(args.stage, create_topics=not args.no_create_topics)
