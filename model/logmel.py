"""Audio -> the ASR-multitask model's input (seed 001, section 4.1): 80-dim log-mel, 25 ms window,
10 ms hop, utterance mean normalisation, over the whole utterance (no fixed-length window).

16 kHz audio (LibriSpeech's rate; anything else is resampled with model/features.py's `resample`),
a Hann window of 400 samples every 160, no centring (frames start at sample 0, as Kaldi's fbank),
natural log of the mel power with a floor, then each band's mean over the utterance subtracted.
"""

import librosa
import numpy as np
from emostream.model.features import resample
from emostream.schemas.model_card import FeatureSettings

LOGMEL_KIND = "logmel-utterance-mean"  # FeatureSettings.kind of this computation
ASR_SAMPLE_RATE_HZ = 16_000
WINDOW_MS = 25
HOP_MS = 10
N_MELS = 80
WINDOW_SAMPLES = ASR_SAMPLE_RATE_HZ * WINDOW_MS // 1000  # 400
HOP_SAMPLES = ASR_SAMPLE_RATE_HZ * HOP_MS // 1000  # 160: 100 frames per second
MEL_POWER_FLOOR = 1e-10  # log(0) guard: digital silence is -23 in log units

LOGMEL_SETTINGS = FeatureSettings(kind=LOGMEL_KIND, sample_rate_hz=ASR_SAMPLE_RATE_HZ, n_coefficients=N_MELS,
                                  n_fft=WINDOW_SAMPLES, hop_length=HOP_SAMPLES, long_input="whole")


def logmel_frame_count(samples: int, settings: FeatureSettings = LOGMEL_SETTINGS) -> int:
    """Frames of `samples` of audio at the feature rate (shorter than a window: one padded frame)."""
    return 1 + max(0, samples - settings.n_fft) // settings.hop_length


def logmel_frames(audio: np.ndarray, sample_rate_hz: int, settings: FeatureSettings = LOGMEL_SETTINGS) -> np.ndarray:
    """Mono float32 audio in [-1, 1] at `sample_rate_hz` -> float32 (frames, n_mels), each band with
    zero mean over the utterance."""
    if settings.kind != LOGMEL_KIND:
        raise ValueError(f"feature kind {settings.kind!r} is not this computation's ({LOGMEL_KIND})")
    at_rate = resample(np.asarray(audio, dtype=np.float32), sample_rate_hz, settings.sample_rate_hz)
    if len(at_rate) < settings.n_fft:
        at_rate = np.pad(at_rate, (0, settings.n_fft - len(at_rate)))
    mel = librosa.feature.melspectrogram(y=at_rate, sr=settings.sample_rate_hz, n_fft=settings.n_fft,
                                         hop_length=settings.hop_length, win_length=settings.n_fft,
                                         window="hann", center=False, power=2.0, n_mels=settings.n_coefficients)
    log_mel = np.log(np.maximum(mel, MEL_POWER_FLOOR)).T  # (frames, n_mels)
    return (log_mel - log_mel.mean(axis=0, keepdims=True)).astype(np.float32)
