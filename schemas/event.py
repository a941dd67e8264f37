"""The emotion result of one segment: JSON on the `emotions` topic, in Redis, and the `on_emotion` event."""

from emostream.schemas.audio import ChannelRole, StreamId
from pydantic import BaseModel, ConfigDict, Field, model_validator

EVENT_FORMAT_VERSION = 1


class LatencyBreakdown(BaseModel):
    """Where the time went between the end of speech and the result, in milliseconds (wall clock)."""

    model_config = ConfigDict(frozen=True)

    vad_ms: float | None = Field(None, description="speech end received -> segment emitted by the VAD stage")
    queue_ms: float | None = Field(None, description="segment emitted -> picked up by the inference stage")
    inference_ms: float | None = Field(None, description="features + model for this segment's micro-batch")
    total_ms: float | None = Field(None, description="speech end received -> result written")


class EmotionEvent(BaseModel):
    """How the speaker of one segment sounds. Idempotent by (stream id, segment index, model version)."""

    model_config = ConfigDict(frozen=True)

    version: int = Field(EVENT_FORMAT_VERSION, description="wire format version")
    stream_id: StreamId = Field(description="call id + channel, as sent by the gateway")
    session_id: StreamId | None = Field(
        None,
        description="conversation / call id when it differs from the stream id; becomes a Redis key "
        "(analytics), so it is validated like the stream id",
    )
    role: ChannelRole = ChannelRole.UNKNOWN
    segment_index: int = Field(ge=0)
    start_ms: float = Field(ge=0, description="segment start, stream time")
    end_ms: float = Field(ge=0, description="segment end, stream time")
    label: str = Field(min_length=1, description="the most likely emotion (or `uncertain` after a threshold)")
    scores: dict[str, float] = Field(description="probability per label of the model's label set; sums to 1")
    arousal: float | None = None
    valence: float | None = None
    transcript: str | None = None
    model_name: str
    model_version: str
    latency: LatencyBreakdown = Field(default_factory=LatencyBreakdown)
    created_at_ms: int | None = Field(None, description="wall clock (Unix ms) when the result was made")

    @model_validator(mode="after")
    def _times_in_order(self) -> "EmotionEvent":
        if self.end_ms < self.start_ms:
            raise ValueError(f"segment {self.segment_index}: end_ms {self.end_ms} before start_ms {self.start_ms}")
        return self

    @property
    def idempotency_key(self) -> str:
        """Same for every replay of this segment through this model version."""
        return f"{self.stream_id}/{self.segment_index}/{self.model_name}@{self.model_version}"

    @property
    def call_id(self) -> str:
        """The session id, or the stream id up to its last ':' (`call-42:customer` -> `call-42`)."""
        if self.session_id:
            return self.session_id
        return self.stream_id.rsplit(":", 1)[0] if ":" in self.stream_id else self.stream_id
