"""Shared helpers of the worker tests: licence-free speech audio and offline reference segmentation.

Speech comes from the committed fixture `tests/fixtures/speech.wav` (synthesised once with
espeak-ng from our own text, see tests/fixtures/README.md): no test needs espeak-ng installed, and
nothing is downloaded. `fixture_utterance(i)` cuts utterance i out of it (times in speech.json).
"""

import functools
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from emostream.schemas.audio import PIPELINE_SAMPLE_RATE_HZ

SPEECH_SAMPLE_RATE_HZ = PIPELINE_SAMPLE_RATE_HZ  # the speech fixture's rate
FIXTURES_DIR = Path(__file__).parent / "fixtures"
UTTERANCES: tuple[int, ...] = (0, 1, 2)  # indices into tests/fixtures/speech.json's utterances
VOICED_THRESHOLD = 300  # int16 magnitude above which a sample counts as speech (for trimming)


@functools.cache
def fixture_utterance(index: int) -> np.ndarray:
    """Utterance `index` of the speech fixture: int16 samples at 16 kHz, silence around it trimmed."""
    card = json.loads((FIXTURES_DIR / "speech.json").read_text())
    samples, rate_hz = sf.read(FIXTURES_DIR / card["file"], dtype="int16")
    assert rate_hz == SPEECH_SAMPLE_RATE_HZ, "the fixture is 16 kHz"
    item = card["utterances"][index]
    piece = samples[item["start_ms"] * rate_hz // 1000 : item["end_ms"] * rate_hz // 1000]
    voiced = np.flatnonzero(np.abs(piece.astype(np.int32)) > VOICED_THRESHOLD)
    return piece[voiced[0] : voiced[-1] + 1]


@dataclass(frozen=True)
class SpokenStream:
    """A stream of utterances separated by silence, with where each utterance is (stream time)."""

    samples: np.ndarray  # int16 at 16 kHz
    utterances_ms: list[tuple[float, float]]  # (start_ms, end_ms) of each utterance


def spoken_stream(
    utterances: tuple[int, ...] = UTTERANCES, *, silence_ms: int = 1_500, lead_ms: int = 700
) -> SpokenStream:
    """Utterances with `silence_ms` of silence between them and `lead_ms` before the first."""
    rate = SPEECH_SAMPLE_RATE_HZ
    parts = [np.zeros(lead_ms * rate // 1000, dtype=np.int16)]
    utterances_ms: list[tuple[float, float]] = []
    position = len(parts[0])
    for index in utterances:
        speech = fixture_utterance(index)
        utterances_ms.append((1000.0 * position / rate, 1000.0 * (position + len(speech)) / rate))
        parts += [speech, np.zeros(silence_ms * rate // 1000, dtype=np.int16)]
        position += len(speech) + silence_ms * rate // 1000
    return SpokenStream(np.concatenate(parts), utterances_ms)


def chunked(samples: np.ndarray, chunk_samples: int) -> list[np.ndarray]:
    return [samples[i : i + chunk_samples] for i in range(0, len(samples), chunk_samples)]


# -- streaming through the real pipeline ----------------------------------------------------------
def reference_segments(samples_16k: np.ndarray, settings, *, chunk_ms: int = 20) -> list:
    """What the VAD stage must emit for this audio sent in order: the offline StreamState result."""
    from emostream.workers.stages.stream_state import Chunk, StreamParams, StreamState

    state = StreamState("reference", StreamParams.from_settings(settings.vad))
    pieces = chunked(samples_16k, SPEECH_SAMPLE_RATE_HZ * chunk_ms // 1000)
    segments = []
    for seq, piece in enumerate(pieces):
        segments += state.accept(
            Chunk(seq=seq, samples=piece, sample_rate_hz=SPEECH_SAMPLE_RATE_HZ), token=seq
        ).segments
    segments += state.accept(
        Chunk(
            seq=len(pieces),
            samples=np.zeros(0, np.int16),
            sample_rate_hz=SPEECH_SAMPLE_RATE_HZ,
            end_of_stream=True,
        ),
        token=-1,
    ).segments
    return segments


def send_chunks(
    producer,
    *,
    topic: str,
    stream_id: str,
    samples: np.ndarray,
    sample_rate_hz: int = SPEECH_SAMPLE_RATE_HZ,
    chunk_ms: int = 20,
    seqs: list[int] | None = None,
    eos: bool = True,
    encoding=None,
    pace_s: float = 0.0,
) -> int:
    """Send chunks (in the order of `seqs`, default all in order) and an end-of-stream record; returns chunks."""
    import time as _time

    from emostream.schemas.audio import AudioChunkHeader, AudioEncoding
    from emostream.workers.cli.clients.producer import encode_s16

    encoding = encoding or AudioEncoding.S16LE
    pieces = chunked(samples, sample_rate_hz * chunk_ms // 1000)
    order = list(range(len(pieces))) if seqs is None else seqs
    key = stream_id.encode()
    for seq in order:
        header = AudioChunkHeader(
            stream_id=stream_id, seq=seq, sample_rate_hz=sample_rate_hz, encoding=encoding
        )
        producer.send(
            topic,
            key=key,
            value=encode_s16(pieces[seq], encoding),
            headers=header.to_kafka_headers(),
        )
        if pace_s:
            _time.sleep(pace_s)
    if eos:
        header = AudioChunkHeader(
            stream_id=stream_id,
            seq=len(pieces),
            sample_rate_hz=sample_rate_hz,
            encoding=encoding,
            end_of_stream=True,
        )
        producer.send(topic, key=key, value=b"", headers=header.to_kafka_headers())
    producer.flush()
    return len(pieces)


def segment_headers(records) -> list:
    from emostream.schemas.segment import SegmentHeader

    return [SegmentHeader.from_kafka(record.key, record.headers) for record in records]


def wait_for(predicate, *, timeout_s: float, interval_s: float = 0.2, what: str = "condition"):
    import time as _time

    deadline = _time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if _time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        _time.sleep(interval_s)


def metric_value(worker, name: str, **labels: str) -> float:
    """A counter / gauge of a worker from its /metrics endpoint (sum over matching samples)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(worker.metrics_url, timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def require_model(settings) -> None:
    """Skip (with the reason) when the inference model of `settings` is not in the registry."""
    from emostream.model.registry import UnknownModelError, resolve

    try:
        resolve(settings.inference.model)
    except UnknownModelError as error:
        pytest.skip(f"inference tests need a trained checkpoint: {error}")


def send_interleaved(settings, audio: dict[str, np.ndarray], done: threading.Event, *, chunk_ms: int = 20,
                     speedup: float = 4.0, pause_at_ms: int | None = None,
                     resume: threading.Event | None = None) -> None:
    """All streams chunk by chunk, interleaved, paced at `speedup` x real time, each ending with an
    end of stream; sets `done` when everything is flushed.

    With `pause_at_ms` and `resume`, the audio from `pause_at_ms` of every stream on is held back
    (what came before is flushed) until `resume` is set: a test can crash a worker while work is
    certainly left for its successor, however slowly a loaded machine runs."""
    from emostream.schemas.audio import AudioChunkHeader
    from emostream.workers.cli.clients.producer import make_audio_producer

    producer = make_audio_producer(settings)
    pieces = {s: chunked(samples, PIPELINE_SAMPLE_RATE_HZ * chunk_ms // 1000) for s, samples in audio.items()}
    began = time.monotonic()
    for seq in range(max(len(p) for p in pieces.values()) + 1):
        if resume is not None and seq * chunk_ms == pause_at_ms:
            producer.flush()
            resume.wait(timeout=300)
            began = time.monotonic() - seq * chunk_ms / 1000 / speedup
        for stream_id, chunks in pieces.items():
            if seq > len(chunks):
                continue
            piece = chunks[seq] if seq < len(chunks) else np.zeros(0, np.int16)
            header = AudioChunkHeader(stream_id=stream_id, seq=seq, sample_rate_hz=PIPELINE_SAMPLE_RATE_HZ,
                                      end_of_stream=seq == len(chunks))
            producer.send(settings.topics.audio, key=stream_id.encode(), value=piece.astype("<i2").tobytes(),
                          headers=header.to_kafka_headers())
        time.sleep(max(0.0, began + (seq + 1) * chunk_ms / 1000 / speedup - time.monotonic()))
    producer.flush()
    producer.close()
    done.set()
