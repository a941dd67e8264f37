"""Chunk decoding: G.711 tables, s16le, resampling to 16 kHz without stream-time drift."""

import math

import numpy as np
import pytest
from emostream.schemas.audio import AudioEncoding
from emostream.schemas.errors import RecordError
from emostream.workers.runtime.codecs import (
    ALAW_TO_S16,
    MULAW_TO_S16,
    decode_to_s16,
    output_samples_before,
    resample_s16,
)
from emostream.workers.stages.stream_state import StreamPosition


def _decode_in_stream(value: bytes, encoding: AudioEncoding, rate_hz: int, before: int) -> np.ndarray:
    """How the VAD stage's StreamState turns a chunk into 16 kHz samples at its stream position."""
    samples = decode_to_s16(value, encoding)
    start = StreamPosition(anchor_rate_hz=rate_hz).moved_by(before, rate_hz=rate_hz)
    end = start.moved_by(len(samples), rate_hz=rate_hz)
    return resample_s16(samples, rate_hz, end.stream_sample - start.stream_sample)

# ITU-T G.711 reference points (the values audioop.ulaw2lin / alaw2lin give)
MULAW_KNOWN = {0x00: -32124, 0x7F: 0, 0x80: 32124, 0xFF: 0, 0x0F: -16764, 0xF0: 120}
ALAW_KNOWN = {0x55: -8, 0xD5: 8, 0x00: -5504, 0x80: 5504, 0x2A: -32256, 0xAA: 32256}


def test_g711_tables_match_the_standard() -> None:
    for code, linear in MULAW_KNOWN.items():
        assert MULAW_TO_S16[code] == linear, f"mu-law 0x{code:02x}"
    for code, linear in ALAW_KNOWN.items():
        assert ALAW_TO_S16[code] == linear, f"A-law 0x{code:02x}"
    # both codes are odd-symmetric and monotonic within each sign half
    assert np.all(np.diff(MULAW_TO_S16[:128].astype(int)) > 0)
    assert np.all(MULAW_TO_S16[:128].astype(int) == -MULAW_TO_S16[128:].astype(int))


def test_g711_matches_audioop_where_available() -> None:
    audioop = pytest.importorskip("audioop")
    every_code = bytes(range(256))
    assert np.array_equal(np.frombuffer(audioop.ulaw2lin(every_code, 2), "<i2"), MULAW_TO_S16)
    assert np.array_equal(np.frombuffer(audioop.alaw2lin(every_code, 2), "<i2"), ALAW_TO_S16)


def test_s16le_decodes_little_endian_and_rejects_a_cut_sample() -> None:
    assert decode_to_s16(b"\x01\x00\xff\xff\x00\x80", AudioEncoding.S16LE).tolist() == [
        1,
        -1,
        -32768,
    ]
    with pytest.raises(RecordError, match="odd number of bytes"):
        decode_to_s16(b"\x01\x00\x02", AudioEncoding.S16LE)


@pytest.mark.parametrize("rate_hz", [8_000, 16_000, 32_000, 44_100, 48_000])
def test_resampled_tone_keeps_its_pitch_and_stream_time(rate_hz: int) -> None:
    tone_hz = 440.0
    seconds = 1.0
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    samples = (8000 * np.sin(2 * math.pi * tone_hz * t)).astype("<i2")
    chunk_samples = rate_hz * 20 // 1000 + 3  # awkward chunk size: rounding must not drift
    decoded = []
    before = 0
    for start in range(0, len(samples), chunk_samples):
        piece = samples[start : start + chunk_samples]
        decoded.append(_decode_in_stream(piece.tobytes(), AudioEncoding.S16LE, rate_hz, before))
        before += len(piece)
    audio = np.concatenate(decoded).astype(float)
    assert len(audio) == output_samples_before(len(samples), rate_hz) == 16_000
    spectrum = np.abs(np.fft.rfft(audio[1000:-1000] * np.hanning(len(audio) - 2000)))
    peak_hz = np.argmax(spectrum) * 16_000 / (len(audio) - 2000)
    assert abs(peak_hz - tone_hz) < 3.0
    assert 5000 < np.percentile(np.abs(audio[1000:-1000]), 99) < 8500


def test_mulaw_chunk_of_8k_becomes_twice_as_many_16k_samples() -> None:
    value = bytes([0xFF, 0x80, 0x00] * 80)  # 240 samples, 30 ms at 8 kHz
    assert len(decode_to_s16(value, AudioEncoding.MULAW)) == 240
    assert len(_decode_in_stream(value, AudioEncoding.MULAW, 8_000, 0)) == 480


def test_the_end_pointer_works_at_the_pipeline_rate() -> None:
    """One rate for the whole pipeline: the model's end-pointer, the segments topic and the decoder."""
    from emostream.model.vad import VAD_SAMPLE_RATE_HZ
    from emostream.schemas.audio import PIPELINE_SAMPLE_RATE_HZ
    from emostream.schemas.segment import SEGMENT_SAMPLE_RATE_HZ

    assert VAD_SAMPLE_RATE_HZ == SEGMENT_SAMPLE_RATE_HZ == PIPELINE_SAMPLE_RATE_HZ


@pytest.mark.parametrize("rate_hz", [8_000, 44_100])
def test_resampling_a_chunk_gives_the_same_samples_every_time(rate_hz: int) -> None:
    """A replay after a crash re-decodes chunks and must cut the same segments: soxr's int16 output
    of a short chunk varies from call to call, so the samples are resampled as floats."""
    noise = (np.random.default_rng(0).standard_normal(rate_hz // 10) * 3000).astype(np.int16)  # a 100 ms chunk
    output_samples = output_samples_before(len(noise), rate_hz)
    first = resample_s16(noise, rate_hz, output_samples)
    for _ in range(50):
        np.testing.assert_array_equal(resample_s16(noise, rate_hz, output_samples), first)
    loud = np.full(rate_hz // 10, 32767, dtype=np.int16)  # overshoot at full scale saturates, not wraps
    assert resample_s16(loud, rate_hz, output_samples).min() > 0
