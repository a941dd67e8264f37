"""All settings of emostream in one pydantic settings model, read from environment variables.

Every variable starts with `EMOSTREAM_`; nested sections use `__`, e.g.
`EMOSTREAM_KAFKA__BOOTSTRAP_SERVERS=broker:9092`, `EMOSTREAM_VAD__AGGRESSIVENESS=3`.
Defaults are the local stack's (the embedded default); production changes them by environment only.
"""

import ssl
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseModel):
    bootstrap_servers: str = Field("127.0.0.1:9092", description="comma-separated host:port list")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    session_timeout_ms: int = Field(6_000, description="short: some brokers hold JoinGroup half of it")
    heartbeat_interval_ms: int = 1_500
    fetch_max_wait_ms: int = Field(
        20, ge=1, description="longest a fetch waits for records; some brokers (Tansu) always wait it out"
    )

    def ssl_context(self) -> ssl.SSLContext:
        """The one TLS context of every Kafka client (faust, aiokafka): CA file, optional client cert."""
        context = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return context


class TopicSettings(BaseModel):
    audio: str = "emostream.audio.v1"
    segments: str = "emostream.segments.v1"
    emotions: str = "emostream.emotions.v1"
    alerts: str = "emostream.alerts.v1"
    dead_letters: str = "emostream.dead-letters.v1"
    partitions: int = Field(8, ge=1, description="partitions of every topic the stack creates")
    replication_factor: int = Field(1, ge=1)


class RedisSettings(BaseModel):
    url: str = Field("redis://127.0.0.1:6379/0", description="redis:// or rediss:// (TLS); may hold user:password")
    password: SecretStr | None = Field(None, description="Redis AUTH password, if not in the url")
    username: str | None = None
    ssl_ca_certs: str | None = None
    key_prefix: str = "emo:v1"
    result_ttl_s: int = Field(86_400, ge=1, description="how long a segment result stays cached")
    events_max_len: int = Field(1_000, ge=1, description="cap of each stream's replay event log (approximate)")
    socket_timeout_s: float = 0.5
    checkpoint_ttl_s: int = Field(7 * 86_400, ge=1, description="how long a stream's VAD checkpoint is kept")
    outage_backlog_max: int = Field(
        10_000, ge=0, description="results kept in memory while Redis is down, written when it returns"
    )
    retry_interval_s: float = Field(1.0, gt=0, description="how often a worker retries Redis after a failure")


    def auth_options(self) -> dict[str, str]:
        """redis-py connection options for AUTH and TLS that are not in the url."""
        options: dict[str, str] = {}
        if self.password is not None:
            options["password"] = self.password.get_secret_value()
        if self.username:
            options["username"] = self.username
        if self.ssl_ca_certs:
            options["ssl_ca_certs"] = self.ssl_ca_certs
        return options


class VadSettings(BaseModel):
    aggressiveness: int = Field(2, ge=0, le=3, description="webrtcvad mode: 0 least, 3 most aggressive")
    frame_ms: int = Field(30, description="webrtcvad frame: 10, 20 or 30")
    onset_ms: int = Field(150, ge=0, description="speech this long within the onset window starts a segment")
    hangover_ms: int = Field(300, ge=0, description="non-speech this long ends a segment")
    padding_ms: int = Field(150, ge=0, description="audio kept before the onset (and inside the hangover)")
    min_segment_ms: int = Field(300, ge=0, description="shorter segments are dropped")
    max_segment_ms: int = Field(10_000, ge=1_000, description="longer speech is split at this length")
    max_gap_ms: int = Field(1_000, ge=0, description="a sequence gap up to this long is filled with silence")
    idle_stream_timeout_s: float = Field(60.0, gt=0, description="streams idle this long are flushed and forgotten")
    max_reorder_chunks: int = Field(50, ge=1, description="out-of-order chunks held while waiting for a gap")
    max_ahead_chunks: int = Field(
        3_000,
        ge=1,
        description="a chunk whose seq is more than this past the expected one is dead-lettered (60 s of 20 ms chunks)",
    )
    end_of_stream_wait_ms: int = Field(
        2_000, ge=0, description="an end of stream with chunks still missing waits this long for them"
    )
    max_live_streams: int = Field(
        10_000, ge=1, description="streams one VAD worker holds; the chunks of a stream past it are dead-lettered"
    )
    max_held_chunks: int = Field(
        200_000,
        ge=1,
        description="chunks held unacknowledged (e.g. while Redis is down) before the worker stops consuming",
    )
    quiet_boundary_ms: int = Field(
        5_000, ge=0, description="in silence, a resume checkpoint after this much audio (bounds replay after a crash)"
    )

    @field_validator("frame_ms")
    @classmethod
    def _webrtcvad_frame(cls, frame_ms: int) -> int:
        if frame_ms not in (10, 20, 30):
            raise ValueError(f"frame_ms {frame_ms} not supported by webrtcvad; use 10, 20 or 30")
        return frame_ms


# The model served, analysed and evaluated when none is named: per-call standardised PLB (its card, and
# model/PLB.md, say why it replaced plb-ravdess8 v3). Every default of a model name reads it from here.
DEFAULT_MODEL = "plb-ravdess8-call"


class InferenceSettings(BaseModel):
    model: str = Field(DEFAULT_MODEL, description="name in the model registry (`emostream models`)")
    batch_max: int = Field(
        4, ge=1, description="micro-batch size; on CPU a larger batch is not faster per segment, only later"
    )
    batch_within_s: float = Field(0.02, gt=0, description="how long to wait to fill a micro-batch")
    torch_threads: int = Field(1, ge=1, description="threads of torch and of numpy's BLAS in an inference worker")
    executor_threads: int = Field(1, ge=1, description="threads running features + model off the event loop")
    max_call_streams: int = Field(
        20_000, ge=1, description="streams whose running statistics a per-call-standardised model keeps "
        "(~1 kB each; the least recently used is dropped and starts again from the model's prior)"
    )


class ObservabilitySettings(BaseModel):
    metrics_port: int = Field(0, ge=0, description="Prometheus /metrics and /healthz port; 0 picks a free one")
    metrics_host: str = Field(
        "127.0.0.1",
        description="address the metrics / health endpoint listens on; 0.0.0.0 inside a container",
    )
    liveness_stall_s: float = Field(
        60.0, gt=0, description="/healthz fails when records wait and none was taken for this long"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class PluginSettings(BaseModel):
    """The plugin runner: which plugins (a JSON config, see `emostream.plugins.registry`) and how
    each event is delivered to them (defaults; each plugin's config entry may override them)."""

    config_path: str | None = Field(None, description="JSON file listing plugins and their options")
    config_json: str | None = Field(None, description="the same JSON inline, e.g. from a Kubernetes secret")
    timeout_s: float = Field(5.0, gt=0, description="one delivery attempt to one plugin longer than this fails")
    max_attempts: int = Field(3, ge=1, description="attempts per plugin before the event is dead-lettered")
    backoff_initial_s: float = Field(0.2, ge=0, description="wait before the 2nd attempt; doubles per attempt")
    backoff_max_s: float = Field(5.0, ge=0, description="longest wait between attempts")
    max_pending_events: int = Field(1_000, ge=1, description="events queued per plugin before the consumer waits")
    max_concurrent_streams: int = Field(64, ge=1, description="streams one plugin handles at once (order kept per stream)")
    delivered_ttl_s: int = Field(86_400, ge=1, description="how long Redis remembers a delivery (idempotency key)")


class Settings(BaseSettings):
    """The one settings model. `Settings()` reads the environment."""

    model_config = SettingsConfigDict(env_prefix="EMOSTREAM_", env_nested_delimiter="__", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    vad: VadSettings = Field(default_factory=VadSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    plugins: PluginSettings = Field(default_factory=PluginSettings)
    worker_id: str = Field("emostream", description="faust app id / consumer group prefix")
