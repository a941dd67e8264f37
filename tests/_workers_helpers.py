"""Shared helpers of the worker tests: licence-free speech audio and offline reference segmentation.

Speech comes from `espeak-ng` (Debian package; the tests that need it skip with a message when it
is missing), synthesised once per session into a temporary folder. Nothing is downloaded.
"""

import functools
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

SPEECH_SAMPLE_RATE_HZ = 16_000
UTTERANCES = (
    "I have been waiting on hold for forty minutes and nobody can tell me what happened to my order.",
    "Thank you so much, that is exactly what I needed.",
    "Could you please check the balance of my account?",
)


@functools.lru_cache(maxsize=None)
def espeak_utterance(text: str, voice: str = "en") -> np.ndarray:
    """`text` spoken by espeak-ng: int16 samples at 16 kHz (leading / trailing silence trimmed)."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): no speech to stream")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "speech.wav"
        subprocess.run([binary, "-v", voice, "-w", str(path), text], check=True, capture_output=True)
        samples, rate_hz = sf.read(path, dtype="int16")
    resampled = soxr.resample(samples, rate_hz, SPEECH_SAMPLE_RATE_HZ).astype(np.int16)
    voiced = np.flatnonzero(np.abs(resampled.astype(np.int32)) > 300)
    return resampled[voiced[0] : voiced[-1] + 1]


@dataclass(frozen=True)
class SpokenStream:
    """A stream of utterances separated by silence, with where each utterance is (stream time)."""

    samples: np.ndarray  # int16 at 16 kHz
    utterances_ms: list[tuple[float, float]]  # (start_ms, end_ms) of each utterance


def spoken_stream(texts: tuple[str, ...] = UTTERANCES, *, silence_ms: int = 1_500, lead_ms: int = 700) -> SpokenStream:
    """Utterances with `silence_ms` of silence between them and `lead_ms` before the first."""
    rate = SPEECH_SAMPLE_RATE_HZ
    parts = [np.zeros(lead_ms * rate // 1000, dtype=np.int16)]
    utterances_ms: list[tuple[float, float]] = []
    position = len(parts[0])
    for text in texts:
        speech = espeak_utterance(text)
        utterances_ms.append((1000.0 * position / rate, 1000.0 * (position + len(speech)) / rate))
        parts += [speech, np.zeros(silence_ms * rate // 1000, dtype=np.int16)]
        position += len(speech) + silence_ms * rate // 1000
    return SpokenStream(np.concatenate(parts), utterances_ms)


def chunked(samples: np.ndarray, chunk_samples: int) -> list[np.ndarray]:
    return [samples[i : i + chunk_samples] for i in range(0, len(samples), chunk_samples)]
