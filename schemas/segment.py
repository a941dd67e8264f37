"""Speech segments on the `segments` topic: 16 kHz s16le PCM in the value, metadata in text headers."""

from typing import Literal

from emostream.schemas.audio import PIPELINE_SAMPLE_RATE_HZ, ChannelRole, StreamId
from emostream.schemas.errors import RecordError
from emostream.schemas.headers import KafkaHeaders, headers_to_text, text_to_headers
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SEGMENT_FORMAT_VERSION = 1
SEGMENT_SAMPLE_RATE_HZ = PIPELINE_SAMPLE_RATE_HZ  # every segment is resampled to it by the VAD stage


class SegmentHeader(BaseModel):
    """One utterance cut by the VAD stage. Times are stream time: ms since the stream's first sample."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    version: Literal[1] = Field(SEGMENT_FORMAT_VERSION, alias="v")
    stream_id: StreamId
    segment_index: int = Field(ge=0, alias="seg", description="0, 1, 2, ... per stream, in stream-time order")
    start_ms: float = Field(ge=0, description="first sample of the segment, stream time")
    end_ms: float = Field(ge=0, description="one past the last sample, stream time")
    role: ChannelRole = ChannelRole.UNKNOWN
    sample_rate_hz: Literal[16000] = Field(SEGMENT_SAMPLE_RATE_HZ, alias="rate")
    speech_end_at_ms: int | None = Field(
        None, description="wall clock (Unix ms) when the chunk ending the speech was received; for latency"
    )
    emitted_at_ms: int | None = Field(None, description="wall clock (Unix ms) when the VAD stage emitted it")

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms

    @classmethod
    def from_kafka(cls, key: bytes | None, headers: KafkaHeaders | dict[str, bytes]) -> "SegmentHeader":
        fields: dict[str, object] = dict(headers_to_text(headers))
        if key is not None:
            fields.setdefault("stream_id", key.decode("utf-8", errors="replace"))
        for name in ("v", "rate"):  # Literal fields do not coerce header text: "1" is not 1
            text = fields.get(name)
            if isinstance(text, str) and text.isdigit():
                fields[name] = int(text)
        try:
            return cls.model_validate(fields)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in item['loc']) or 'record'}: {item['msg']}" for item in error.errors()
            )
            raise RecordError(f"segment of stream {fields.get('stream_id')!s}: {problems}") from None

    def to_kafka_headers(self) -> KafkaHeaders:
        return text_to_headers(self.model_dump(by_alias=True))
