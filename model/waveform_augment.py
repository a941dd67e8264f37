"""Waveform-level augmentation for the production recipe: what calls do to speech that studio clips
lack. Each variant is computed once per clip (the feature bank, `model/feature_cache.py`) and the
training engine draws one variant per clip per epoch, so no audio work is left in the training loop.

Variants (names are what recipes and feature tables record):
- `original`: the clip as it is.
- `speed-0.9`, `speed-1.1`: speed perturbation (tempo and pitch together, as Kaldi's), by resampling.
- `noise-20db`: white noise at 20 dB below the speech RMS.
- `telephony`: 8 kHz band limit and a G.711 mu-law round trip, as a telephone gateway delivers it.
- `crop`: a 0.5-3 s piece of the speech, as short VAD segments are (the served onset handling applies).
"""

from collections.abc import Callable

import librosa
import numpy as np
from emostream.model.g711 import mulaw_decode, mulaw_encode

PRODUCTION_VARIANTS = ("speed-0.9", "speed-1.1", "noise-20db", "telephony", "crop")  # the production recipe's bank
TELEPHONE_RATE_HZ = 8_000
CROP_S = (0.5, 3.0)
TRIM_TOP_DB = 40.0  # what counts as the speech of a clip for `crop`


def resample(audio: np.ndarray, from_rate_hz: int, to_rate_hz: int) -> np.ndarray:
    return librosa.resample(audio, orig_sr=from_rate_hz, target_sr=to_rate_hz, res_type="soxr_hq").astype(
        np.float32)


def telephony(audio: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """8 kHz and mu-law, then back to `sample_rate_hz` (the band stays limited to 4 kHz)."""
    narrow = resample(audio, sample_rate_hz, TELEPHONE_RATE_HZ)
    s16 = np.clip(np.round(narrow * 32767.0), -32768, 32767).astype(np.int16)
    decoded = mulaw_decode(mulaw_encode(s16)).astype(np.float32) / 32768.0
    return resample(decoded, TELEPHONE_RATE_HZ, sample_rate_hz)


def speed(audio: np.ndarray, sample_rate_hz: int, factor: float) -> np.ndarray:
    """Played `factor` times faster (shorter, higher): resampled to rate / factor, read at rate."""
    return resample(audio, sample_rate_hz, round(sample_rate_hz / factor))


def add_noise(audio: np.ndarray, snr_db: float, generator: np.random.Generator) -> np.ndarray:
    speech_rms = float(np.sqrt(np.mean(np.square(audio)))) or 1e-4
    noise = generator.standard_normal(len(audio)).astype(np.float32) * speech_rms * 10 ** (-snr_db / 20)
    return np.clip(audio + noise, -1.0, 1.0).astype(np.float32)


def crop(audio: np.ndarray, sample_rate_hz: int, generator: np.random.Generator) -> np.ndarray:
    """A random CROP_S-long piece of the clip's speech (all of it when the speech is shorter)."""
    _, (start, end) = librosa.effects.trim(audio, top_db=TRIM_TOP_DB)
    length = min(end - start, int(generator.uniform(*CROP_S) * sample_rate_hz))
    offset = start + int(generator.integers(0, end - start - length + 1))
    return audio[offset : offset + length]


VARIANTS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "original": lambda audio, rate, generator: audio,
    "speed-0.9": lambda audio, rate, generator: speed(audio, rate, 0.9),
    "speed-1.1": lambda audio, rate, generator: speed(audio, rate, 1.1),
    "noise-20db": lambda audio, rate, generator: add_noise(audio, 20.0, generator),
    "telephony": lambda audio, rate, generator: telephony(audio, rate),
    "crop": lambda audio, rate, generator: crop(audio, rate, generator),
}


def variant(audio: np.ndarray, sample_rate_hz: int, name: str, seed: int) -> np.ndarray:
    """One named variant of a clip; deterministic for a (clip, name, seed)."""
    if name not in VARIANTS:
        raise ValueError(f"waveform variant {name!r} unknown; use one of {', '.join(VARIANTS)}")
    generator = np.random.default_rng([seed, list(VARIANTS).index(name)])
    return VARIANTS[name](audio, sample_rate_hz, generator)
