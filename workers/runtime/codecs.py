"""Audio chunk decoding: s16le / G.711 mu-law / G.711 A-law bytes -> 16 kHz s16le for the end-pointer.

G.711 decoding uses 256-entry numpy tables (ITU-T G.711, the same values `audioop.ulaw2lin` /
`audioop.alaw2lin` return; `audioop` is gone in Python 3.13). Resampling uses soxr.

Each chunk is resampled on its own (`resample_s16`, used by `stages.stream_state`; no filter state
is carried across chunks), so decoding a chunk depends only on that chunk and on how many input
samples the stream had before it. That makes a replay after a crash, which restarts from a chunk
boundary, produce exactly the same samples as the first run did (the samples are resampled as
floats and rounded: soxr's own int16 output of a short chunk varies from call to call). Output
lengths follow the cumulative input position, so stream time never drifts: after n input samples
at rate r the stream holds exactly round(n * 16000 / r) output samples.
"""

import numpy as np
import soxr
from emostream.model.g711 import mulaw_decode
from emostream.schemas.audio import (
    PIPELINE_SAMPLE_RATE_HZ,
    SUPPORTED_SAMPLE_RATES_HZ,
    AudioEncoding,
)
from emostream.schemas.errors import RecordError

INT16 = np.iinfo(np.int16)

__all__ = [
    "ALAW_TO_S16",
    "MULAW_TO_S16",
    "decode_to_s16",
    "output_samples_before",
    "resample_s16",
]


def _alaw_table() -> np.ndarray:
    """G.711 A-law byte -> linear int16 (ITU-T G.711; even bits are inverted with 0x55)."""
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(
        exponent == 0,
        (mantissa << 4) + 8,
        ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0),
    )
    return np.where(sign != 0, magnitude, -magnitude).astype(np.int16)


MULAW_TO_S16: np.ndarray = mulaw_decode(np.arange(256, dtype=np.uint8))
ALAW_TO_S16: np.ndarray = _alaw_table()


def decode_to_s16(value: bytes, encoding: AudioEncoding) -> np.ndarray:
    """Raw chunk bytes -> int16 samples at the chunk's own rate. Raises RecordError on a torn sample."""
    if encoding is AudioEncoding.S16LE:
        if len(value) % 2:
            raise RecordError(
                f"s16le audio has an odd number of bytes ({len(value)}): a sample is cut"
            )
        return np.frombuffer(value, dtype="<i2").astype(np.int16, copy=False)
    codes = np.frombuffer(value, dtype=np.uint8)
    table = MULAW_TO_S16 if encoding is AudioEncoding.MULAW else ALAW_TO_S16
    return table[codes]


def output_samples_before(input_samples: int, sample_rate_hz: int) -> int:
    """16 kHz samples that `input_samples` at `sample_rate_hz` map to (the stream-time position)."""
    return (input_samples * PIPELINE_SAMPLE_RATE_HZ + sample_rate_hz // 2) // sample_rate_hz


def resample_s16(samples: np.ndarray, sample_rate_hz: int, output_samples: int) -> np.ndarray:
    """Resample int16 audio to 16 kHz, cut or zero-padded to exactly `output_samples`."""
    if sample_rate_hz not in SUPPORTED_SAMPLE_RATES_HZ:
        rates = ", ".join(str(rate) for rate in SUPPORTED_SAMPLE_RATES_HZ)
        raise RecordError(f"sample rate {sample_rate_hz} not supported; use {rates}")
    if sample_rate_hz == PIPELINE_SAMPLE_RATE_HZ or len(samples) == 0:
        resampled = samples
    else:
        # as floats: soxr's int16 output for a chunk this short is not deterministic (up to 10
        # different outputs, +-1 LSB, in 100 calls on one 100 ms chunk of 8 kHz noise; soxr 1.1.0),
        # which made a replayed chunk differ from its first run and, rarely, the end-pointer close a
        # frame apart; its float path gives the same samples every time
        floats = soxr.resample(samples.astype(np.float32), sample_rate_hz, PIPELINE_SAMPLE_RATE_HZ, quality="HQ")
        resampled = np.clip(np.rint(floats), INT16.min, INT16.max).astype(np.int16)
    if len(resampled) >= output_samples:
        return np.ascontiguousarray(resampled[:output_samples], dtype=np.int16)
    padded = np.zeros(output_samples, dtype=np.int16)
    padded[: len(resampled)] = resampled
    return padded
