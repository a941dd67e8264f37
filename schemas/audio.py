"""Audio chunks on the `audio` topic: raw PCM in the record value, metadata in text headers.

A gateway publishes one record per chunk (20-200 ms is normal):

- key: the stream id (UTF-8), e.g. `call-42:customer`; all chunks of a stream share a partition.
- value: the samples, mono, in `enc` (s16le little-endian 16-bit, or G.711 mu-law / A-law 8-bit).
- headers (ASCII text, see `AudioChunkHeader` for each field):
  `v=1`, `seq=17`, `rate=8000`, `enc=mulaw`, `role=customer`, `ts_ms=1732330000123`, `eos=false`,
  `epoch=0`.

Sequence numbers and epochs (what the VAD stage does with them):
- `seq` counts chunks from 0 within one `epoch`. Duplicates and chunks whose seq already passed are
  dropped (metric `emostream_chunks{outcome="duplicate"|"late"}`); a missing seq is a gap, filled
  with silence up to `vad.max_gap_ms`, else it closes the open segment.
- A seq more than `vad.max_ahead_chunks` past the expected one is dead-lettered, not buffered.
- A gateway that restarts its sequence numbers (e.g. after a reconnect) must send a higher `epoch`
  (a session counter: 0, 1, 2, ...). The first chunk of a new epoch closes the previous one where it
  stands and restarts seq at 0 at the current stream time; segment indices continue. Chunks of an
  older epoch are dropped (`outcome="stale_epoch"`). Restarting seq at 0 *without* a new epoch makes
  the new chunks late (dropped and counted): the stream resumes only past the old seq.
- End of stream (`eos=true`, value may be empty): if chunks before it are still missing, it waits
  up to `vad.end_of_stream_wait_ms` for them, then their gaps are declared and the stream ends. An
  end-of-stream chunk whose value cannot be decoded is dead-lettered but still ends the stream.

With kcat, a gateway in any language can do the same:
`kcat -P -b HOST:PORT -t audio -k call-42:customer -H v=1 -H seq=0 -H rate=16000 -H enc=s16le chunk.raw`
"""

from enum import StrEnum
from typing import Annotated

from emostream.schemas.errors import RecordError
from emostream.schemas.headers import KafkaHeaders, headers_to_text, text_to_headers
from pydantic import BaseModel, ConfigDict, Field, ValidationError

AUDIO_FORMAT_VERSION = 1
SUPPORTED_SAMPLE_RATES_HZ: tuple[int, ...] = (8_000, 16_000, 32_000, 44_100, 48_000)
# Every stage after the VAD stage's decoder works at this rate: segments topic, end-pointer, model.
PIPELINE_SAMPLE_RATE_HZ = 16_000
# s16le sample k stands for k / INT16_FULL_SCALE in [-1, 1): the scale between PCM and float audio.
INT16_FULL_SCALE = 32_768

# Stream ids become Kafka keys and Redis hash tags: no braces, no whitespace.
STREAM_ID_PATTERN = r"^[A-Za-z0-9._:@/+-]{1,128}$"
StreamId = Annotated[str, Field(pattern=STREAM_ID_PATTERN)]


class AudioEncoding(StrEnum):
    """Sample encodings accepted from gateways."""

    S16LE = "s16le"  # signed 16-bit little-endian linear PCM
    MULAW = "mulaw"  # G.711 mu-law, 8 bits per sample
    ALAW = "alaw"  # G.711 A-law, 8 bits per sample

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self is AudioEncoding.S16LE else 1


class ChannelRole(StrEnum):
    """Who is speaking on a stream's channel."""

    CUSTOMER = "customer"
    AGENT = "agent"
    USER = "user"  # the human talking to a voice bot
    BOT = "bot"
    UNKNOWN = "unknown"


class AudioChunkHeader(BaseModel):
    """Metadata of one audio chunk, carried in Kafka headers beside the raw PCM value."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    version: int = Field(AUDIO_FORMAT_VERSION, alias="v", description="wire format version; 1")
    stream_id: StreamId = Field(description="call id + channel; also the record key")
    seq: int = Field(ge=0, description="chunk sequence number within the stream, from 0, no gaps expected")
    sample_rate_hz: int = Field(alias="rate", description="one of SUPPORTED_SAMPLE_RATES_HZ")
    encoding: AudioEncoding = Field(AudioEncoding.S16LE, alias="enc")
    role: ChannelRole = Field(ChannelRole.UNKNOWN, description="channel role of the speaker")
    sent_at_ms: int | None = Field(None, alias="ts_ms", ge=0, description="gateway wall clock, Unix ms")
    end_of_stream: bool = Field(False, alias="eos", description="last chunk of the stream (value may be empty)")
    epoch: int = Field(
        0, ge=0, description="gateway session counter: raise it when seq restarts at 0 (e.g. after a reconnect)"
    )

    def model_post_init(self, _context: object) -> None:
        if self.version != AUDIO_FORMAT_VERSION:
            raise RecordError(
                f"stream {self.stream_id}, chunk {self.seq}: audio format version {self.version} "
                f"not supported; use {AUDIO_FORMAT_VERSION}"
            )
        if self.sample_rate_hz not in SUPPORTED_SAMPLE_RATES_HZ:
            rates = ", ".join(str(rate) for rate in SUPPORTED_SAMPLE_RATES_HZ)
            raise RecordError(
                f"stream {self.stream_id}, chunk {self.seq}: sample rate {self.sample_rate_hz} "
                f"not supported; use {rates}"
            )

    @classmethod
    def from_kafka(cls, key: bytes | None, headers: KafkaHeaders | dict[str, bytes]) -> "AudioChunkHeader":
        """Parse a record's key and headers; raises RecordError naming the problem."""
        fields: dict[str, object] = dict(headers_to_text(headers))
        if key is None:
            raise RecordError("audio chunk has no key: the key must be the stream id")
        try:
            fields["stream_id"] = key.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordError("audio chunk key is not UTF-8 text: the key must be the stream id") from None
        fields.setdefault("v", str(AUDIO_FORMAT_VERSION))
        try:
            return cls.model_validate(fields)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in item['loc']) or 'record'}: {item['msg']}" for item in error.errors()
            )
            raise RecordError(f"stream {fields.get('stream_id')!s}, chunk {fields.get('seq', '?')}: {problems}") from None

    def to_kafka_headers(self) -> KafkaHeaders:
        omitted = {"stream_id"} | ({"epoch"} if self.epoch == 0 else set())  # epoch 0 is implied
        return text_to_headers(self.model_dump(by_alias=True, exclude=omitted))

    def duration_ms(self, value_size_bytes: int) -> float:
        """Audio duration of a value of this many bytes, in milliseconds."""
        samples = value_size_bytes // self.encoding.bytes_per_sample
        return 1000.0 * samples / self.sample_rate_hz
