"""The faust app of one worker stage, built from the one settings model.

Choices that matter for correctness (see ../shared/docs/BROKER-NOTES.md):
- at-least-once (`processing_guarantee`), producer acks=all WITHOUT idempotence or transactions
  (some brokers, Tansu among them, refuse idempotent producers; every output is idempotent by key);
- short session timeouts (some brokers hold a JoinGroup reply for half of it);
- `consumer_auto_offset_reset=earliest`: a new consumer group reads from the start, never from a
  broker's notion of "latest" (Tansu reports wrong end offsets);
- no faust tables (changelog recovery loses updates on Tansu): per-stream state lives in memory with
  a resume checkpoint in Redis, see `workers.stages.stream_state` and `workers.stages.vad`;
- topics are declared with their partition counts but never auto-created by faust
  (`topic_allow_declare=False`): `workers.runtime.topics.ensure_topics` creates them explicitly;
- `stream_wait_empty=False`: on a rebalance the VAD stage drops the state of revoked partitions
  instead of waiting for held (unacknowledged) chunks; the new owner replays them.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import faust
from emostream.schemas.settings import KafkaSettings, Settings
from emostream.workers.runtime.kafka_config import require_sasl_mechanism
from faust.types import TopicT

if TYPE_CHECKING:
    from emostream.workers.runtime.consumer_view import ConsumerView
    from emostream.workers.runtime.dead_letters import DeadLetterSink
    from emostream.workers.runtime.liveness import Liveness
    from emostream.workers.runtime.metrics import WorkerMetrics
    from emostream.workers.runtime.result_store import ResultStore

__all__ = [
    "StageTopics",
    "WorkerContext",
    "broker_credentials",
    "broker_urls",
    "consume_without_faust",
    "create_app",
    "create_worker_context",
    "declare_topics",
]

PRODUCER_LINGER_MS = 2  # small: results are latency-bound, not throughput-bound
COMMIT_INTERVAL_S = 1.0  # how often acknowledged offsets are committed
REQUEST_TIMEOUT_S = 15.0


def broker_urls(kafka: KafkaSettings) -> list[str]:
    return [
        f"kafka://{address.strip()}"
        for address in kafka.bootstrap_servers.split(",")
        if address.strip()
    ]


def broker_credentials(kafka: KafkaSettings) -> faust.SASLCredentials | faust.SSLCredentials | None:
    """faust credentials for SASL (PLAIN / SCRAM) over PLAINTEXT or SSL, or plain SSL, or none."""
    if kafka.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            mechanism=require_sasl_mechanism(kafka),
            ssl_context=kafka.ssl_context() if kafka.security_protocol == "SASL_SSL" else None,
        )
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(kafka.ssl_context())
    return None


def _use_fetch_max_wait(fetch_max_wait_ms: int) -> None:
    """faust hard-codes fetch_max_wait_ms=1500 for its worker consumer. Some brokers (Tansu, measured)
    answer a fetch only when that wait is over even if records arrived meanwhile, which put up to
    1.5 s per stage on every result. Set the consumer's wait before it starts (process-wide: one
    worker process runs one app)."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    original = getattr(AIOKafkaConsumerThread, "_emostream_original_create", None)
    if original is None:
        original = AIOKafkaConsumerThread._create_worker_consumer
        AIOKafkaConsumerThread._emostream_original_create = original  # type: ignore[attr-defined]

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]


def create_app(settings: Settings, *, stage: str) -> faust.App:
    """A faust app whose consumer group is `<worker_id>-<stage>`; no agents yet (the stage adds them)."""
    kafka = settings.kafka
    _use_fetch_max_wait(kafka.fetch_max_wait_ms)
    return faust.App(
        f"{settings.worker_id}-{stage}",
        broker=broker_urls(kafka),
        broker_credentials=broker_credentials(kafka),
        broker_session_timeout=kafka.session_timeout_ms / 1000,
        broker_heartbeat_interval=kafka.heartbeat_interval_ms / 1000,
        broker_request_timeout=REQUEST_TIMEOUT_S,
        broker_commit_interval=COMMIT_INTERVAL_S,
        broker_max_poll_interval=300.0,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=PRODUCER_LINGER_MS,
        processing_guarantee="at_least_once",
        store="memory://",
        topic_allow_declare=False,
        topic_disable_leader=True,
        topic_partitions=settings.topics.partitions,
        topic_replication_factor=settings.topics.replication_factor,
        stream_wait_empty=False,
        stream_recovery_delay=0.0,
        web_enabled=False,
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
    )


def consume_without_faust(app: faust.App) -> None:
    """The stage consumes with its own consumer (`workers.runtime.batch_consumer`): faust's consumer,
    conductor and table manager are not started (the app keeps its producer, timers and tasks), so
    faust never joins the stage's consumer group."""
    from faust.app.base import BootStrategy

    app.boot_strategy = BootStrategy(app, enable_kafka_consumer=False)


@dataclass(frozen=True)
class StageTopics:
    audio: TopicT
    segments: TopicT
    emotions: TopicT
    dead_letters: TopicT


def declare_topics(app: faust.App, settings: Settings) -> StageTopics:
    """The pipeline's topics with their partition counts; raw bytes keys and values (headers carry metadata)."""
    topics = settings.topics

    def declare(name: str) -> TopicT:
        return app.topic(
            name,
            partitions=topics.partitions,
            replicas=topics.replication_factor,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )

    return StageTopics(
        audio=declare(topics.audio),
        segments=declare(topics.segments),
        emotions=declare(topics.emotions),
        dead_letters=declare(topics.dead_letters),
    )


@dataclass
class WorkerContext:
    """What every stage of one worker process shares: its app, topics, settings, Redis and metrics."""

    app: faust.App
    topics: StageTopics
    settings: Settings
    store: "ResultStore"
    metrics: "WorkerMetrics"
    dead_letters: "DeadLetterSink"
    liveness: "Liveness"  # stages call `liveness.took(tp, offset)` for each record they take
    health: dict[str, object]  # extra /healthz fields a stage keeps up to date
    # the input consumer: faust's, unless the stage consumes with its own (the VAD stage's BatchConsumer)
    consumer: "ConsumerView"


def create_worker_context(settings: Settings, *, stage: str) -> WorkerContext:
    from emostream.workers.runtime.consumer_view import FaustConsumerView
    from emostream.workers.runtime.dead_letters import DeadLetterSink
    from emostream.workers.runtime.liveness import Liveness
    from emostream.workers.runtime.metrics import WorkerMetrics
    from emostream.workers.runtime.result_store import ResultStore

    app = create_app(settings, stage=stage)
    topics = declare_topics(app, settings)
    metrics = WorkerMetrics(stage)
    ctx = WorkerContext(
        app=app,
        topics=topics,
        settings=settings,
        store=ResultStore(settings.redis),
        metrics=metrics,
        dead_letters=DeadLetterSink(topics.dead_letters, stage=stage, metrics=metrics),
        liveness=Liveness(app, consumer=lambda: ctx.consumer, stall_after_s=settings.observability.liveness_stall_s),
        health={},
        consumer=FaustConsumerView(app),
    )
    return ctx
