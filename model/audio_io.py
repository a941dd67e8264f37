"""Reading audio files with errors that name the file and the problem."""

from pathlib import Path

import numpy as np
import soundfile as sf

MIN_DURATION_S = 0.3  # shorter audio carries too little to classify (and is below the VAD minimum)
SUPPORTED_FILE_RATES_HZ = (8_000, 11_025, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000, 88_200, 96_000)
SILENCE_PEAK = 1e-4  # peak amplitude below which a file counts as silence only


class AudioInputError(ValueError):
    """An audio input cannot be used; the message names the input and the problem."""


def check_waveform(audio: np.ndarray, sample_rate_hz: int, source: str) -> np.ndarray:
    """Validate mono float audio; returns float32. Raises AudioInputError naming `source`."""
    if audio.ndim != 1:
        raise AudioInputError(f"{source}: {audio.shape[1]} channels; only mono audio is supported (mix down first)")
    if not np.all(np.isfinite(audio)):
        raise AudioInputError(f"{source}: contains NaN or infinite samples")
    duration_s = len(audio) / sample_rate_hz
    if duration_s < MIN_DURATION_S:
        raise AudioInputError(f"{source}: {duration_s:.3f} s long; at least {MIN_DURATION_S} s is needed")
    if float(np.max(np.abs(audio))) < SILENCE_PEAK:
        raise AudioInputError(f"{source}: silence only (peak amplitude below {SILENCE_PEAK})")
    return audio.astype(np.float32, copy=False)


def read_audio(path: Path, allow_stereo: bool = False) -> tuple[np.ndarray, int]:
    """Read WAV / FLAC / OGG as mono float32 in [-1, 1] and its sample rate in Hz."""
    if path.is_dir():
        raise AudioInputError(f"{path}: a folder, not an audio file")
    if not path.is_file():
        raise AudioInputError(f"{path}: no such file")
    try:
        audio, sample_rate_hz = sf.read(str(path), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioInputError(f"{path}: unreadable or corrupt audio ({error})") from None
    if sample_rate_hz not in SUPPORTED_FILE_RATES_HZ:
        rates = ", ".join(str(rate) for rate in SUPPORTED_FILE_RATES_HZ)
        raise AudioInputError(f"{path}: sample rate {sample_rate_hz} Hz not supported; use one of {rates}")
    if audio.ndim == 2:
        if audio.shape[1] == 1:
            audio = audio[:, 0]
        elif allow_stereo:
            audio = audio.mean(axis=1)
    return check_waveform(audio, sample_rate_hz, str(path)), sample_rate_hz
