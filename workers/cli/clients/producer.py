"""Stream a recording to the audio topic the way a voice-bot / call-centre gateway would.

One record per chunk: key = stream id, value = raw PCM in the chosen encoding, headers from
`AudioChunkHeader.to_kafka_headers()` (`seq` from 0, no gaps), then a final empty chunk with
`eos=true`. With `realtime=True` chunk n is sent when n * chunk_ms of audio has elapsed since the
first one, as a live call would deliver it.
"""

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr
from emostream.schemas.audio import (
    INT16_FULL_SCALE,
    SUPPORTED_SAMPLE_RATES_HZ,
    AudioChunkHeader,
    AudioEncoding,
    ChannelRole,
)
from emostream.schemas.settings import Settings
from emostream.workers.runtime.codecs import ALAW_TO_S16, MULAW_TO_S16
from emostream.workers.runtime.kafka_config import kafka_python_options
from kafka import KafkaProducer

__all__ = [
    "DEFAULT_CHUNK_MS",
    "AudioFileError",
    "SendError",
    "SendReport",
    "encode_s16",
    "iter_chunks",
    "load_recording",
    "make_audio_producer",
    "send_recording",
]

DEFAULT_CHUNK_MS = 20  # what telephony gateways usually send (RTP packetisation)
MIN_CHUNK_MS = 10
MAX_CHUNK_MS = 1_000
SEND_TIMEOUT_S = 30.0  # flush deadline at the end of a recording

log = logging.getLogger(__name__)


class SendError(RuntimeError):
    """The broker did not accept a chunk; the message names the stream, the chunk and the cause."""


class AudioFileError(ValueError):
    """A recording cannot be read or converted; the message names the file and the problem."""


def load_recording(path: Path, *, sample_rate_hz: int) -> np.ndarray:
    """Read WAV / FLAC / OGG (anything libsndfile reads), mix to mono, resample; int16 samples."""
    if sample_rate_hz not in SUPPORTED_SAMPLE_RATES_HZ:
        rates = ", ".join(str(rate) for rate in SUPPORTED_SAMPLE_RATES_HZ)
        raise AudioFileError(
            f"{path}: target sample rate {sample_rate_hz} not supported; use {rates}"
        )
    try:
        samples, file_rate_hz = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError, soundfile.LibsndfileError) as error:
        raise AudioFileError(f"{path}: cannot read audio ({error})") from None
    mono = samples.mean(axis=1, dtype=np.float32)
    if len(mono) == 0:
        raise AudioFileError(f"{path}: holds no samples")
    if file_rate_hz != sample_rate_hz:
        mono = soxr.resample(mono, file_rate_hz, sample_rate_hz, quality="HQ")
    # soundfile reads int16 k as k / INT16_FULL_SCALE: scaling back is bit-exact
    return np.clip(np.round(mono * INT16_FULL_SCALE), -32_768, 32_767).astype(np.int16)


def _g711_encoder(decode_table: np.ndarray) -> np.ndarray:
    """int16 value (offset by 32768) -> the G.711 byte whose decoded value is nearest.

    Built by inverting the decoder's table (workers.runtime.codecs), so encode and decode cannot disagree.
    """
    order = np.argsort(decode_table, kind="stable")
    sorted_values = decode_table[order].astype(np.int32)
    linear = np.arange(-32_768, 32_768, dtype=np.int32)
    upper = np.clip(np.searchsorted(sorted_values, linear), 1, len(sorted_values) - 1)
    lower = upper - 1
    take_upper = np.abs(sorted_values[upper] - linear) < np.abs(linear - sorted_values[lower])
    return np.where(take_upper, order[upper], order[lower]).astype(np.uint8)


_ENCODERS: dict[AudioEncoding, np.ndarray] = {}


def encode_s16(samples: np.ndarray, encoding: AudioEncoding) -> bytes:
    """int16 samples -> wire bytes: s16le, or G.711 mu-law / A-law (one byte per sample)."""
    if encoding is AudioEncoding.S16LE:
        return samples.astype("<i2", copy=False).tobytes()
    if encoding not in _ENCODERS:
        _ENCODERS[encoding] = _g711_encoder(
            MULAW_TO_S16 if encoding is AudioEncoding.MULAW else ALAW_TO_S16
        )
    return _ENCODERS[encoding][samples.astype(np.int32) + 32_768].tobytes()


def iter_chunks(samples: np.ndarray, *, sample_rate_hz: int, chunk_ms: int) -> Iterator[np.ndarray]:
    """Consecutive chunks of `chunk_ms` (the last one may be shorter)."""
    if not MIN_CHUNK_MS <= chunk_ms <= MAX_CHUNK_MS:
        raise ValueError(
            f"chunk of {chunk_ms} ms not supported; use {MIN_CHUNK_MS}-{MAX_CHUNK_MS} ms"
        )
    chunk_samples = sample_rate_hz * chunk_ms // 1000
    for start in range(0, len(samples), chunk_samples):
        yield samples[start : start + chunk_samples]


@dataclass(frozen=True)
class SendReport:
    stream_id: str
    chunks: int  # audio chunks, not counting the end-of-stream record
    audio_ms: float
    wall_s: float
    bytes_sent: int


def make_audio_producer(settings: Settings) -> KafkaProducer:
    """acks=all, no idempotence (Tansu rejects idempotent producers), small linger for batching."""
    return KafkaProducer(
        **kafka_python_options(settings.kafka, client_id="emostream-send"),
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
    )


def send_recording(
    producer: KafkaProducer,
    *,
    topic: str,
    stream_id: str,
    samples: np.ndarray,
    sample_rate_hz: int,
    encoding: AudioEncoding = AudioEncoding.S16LE,
    role: ChannelRole = ChannelRole.UNKNOWN,
    chunk_ms: int = DEFAULT_CHUNK_MS,
    realtime: bool = False,
    first_seq: int = 0,
) -> SendReport:
    """Send `samples` (int16 at `sample_rate_hz`) as chunks plus an end-of-stream record; flush."""
    key = stream_id.encode("utf-8")
    began = time.monotonic()
    seq = first_seq
    pending = []
    bytes_sent = 0
    audio_ms = 0.0
    for chunk in iter_chunks(samples, sample_rate_hz=sample_rate_hz, chunk_ms=chunk_ms):
        if realtime:
            delay_s = began + audio_ms / 1000.0 - time.monotonic()
            if delay_s > 0:
                time.sleep(delay_s)
        value = encode_s16(chunk, encoding)
        header = AudioChunkHeader(
            stream_id=stream_id,
            seq=seq,
            rate=sample_rate_hz,
            enc=encoding,
            role=role,
            ts_ms=int(time.time() * 1000),
        )
        pending.append(
            (seq, producer.send(topic, key=key, value=value, headers=header.to_kafka_headers()))
        )
        bytes_sent += len(value)
        audio_ms += 1000.0 * len(chunk) / sample_rate_hz
        seq += 1
    if realtime:
        delay_s = began + audio_ms / 1000.0 - time.monotonic()
        if delay_s > 0:
            time.sleep(delay_s)
    end_header = AudioChunkHeader(
        stream_id=stream_id,
        seq=seq,
        rate=sample_rate_hz,
        enc=encoding,
        role=role,
        ts_ms=int(time.time() * 1000),
        eos=True,
    )
    pending.append(
        (seq, producer.send(topic, key=key, value=b"", headers=end_header.to_kafka_headers()))
    )
    producer.flush(timeout=SEND_TIMEOUT_S)
    for failed_seq, future in pending:
        if future.failed():
            raise SendError(
                f"stream {stream_id}, chunk {failed_seq}: not delivered to {topic!r} ({future.exception})"
            )
    return SendReport(
        stream_id=stream_id,
        chunks=seq - first_seq,
        audio_ms=audio_ms,
        wall_s=time.monotonic() - began,
        bytes_sent=bytes_sent,
    )
