"""Audio -> model input, exactly as the PLB thesis: librosa MFCC, 39 coefficients, 100,000 samples.

Table 3 of the thesis (34 of RAVDESS's 1,440 clips longer than 100,000 samples) shows audio was loaded
at librosa's default 22,050 Hz, so 100,000 samples = 4.535 s and, with n_fft 2048 / hop 512 and
centred frames, 1 + 100000 // 512 = 196 frames: the input is 196 frames x 39 coefficients.
"""

from collections.abc import Callable, Sequence
from functools import partial

import librosa
import numpy as np
from emostream.schemas.model_card import FeatureSettings


def resample(audio: np.ndarray, from_rate_hz: int, to_rate_hz: int) -> np.ndarray:
    """Band-limited resampling (soxr via librosa) of mono float32 audio."""
    if from_rate_hz == to_rate_hz:
        return audio.astype(np.float32, copy=False)
    return librosa.resample(audio, orig_sr=from_rate_hz, target_sr=to_rate_hz, res_type="soxr_hq").astype(
        np.float32
    )


def fit_length(audio: np.ndarray, length_samples: int, pad_position: str = "end") -> np.ndarray:
    """Cut the end, or zero-pad to exactly `length_samples` (the thesis's pad/trim): the zeros after
    the audio (`end`), or half before it and the rest after (`centre`)."""
    if len(audio) >= length_samples:
        return audio[:length_samples]
    missing = length_samples - len(audio)
    before = missing // 2 if pad_position == "centre" else 0
    return np.pad(audio, (before, missing - before))


def window_starts(length_samples: int, settings: FeatureSettings) -> list[int]:
    """Start samples of the input windows covering audio of `length_samples` (one if it fits)."""
    if settings.long_input == "trim" or length_samples <= settings.input_samples:
        return [0]
    last_start = length_samples - settings.input_samples
    starts = list(range(0, last_start + 1, settings.window_hop_samples))
    if starts[-1] != last_start:
        starts.append(last_start)
    return starts


MFCC_MEL_BANDS = 128  # librosa.feature.mfcc's default n_mels


def input_shift_per_db(settings: FeatureSettings) -> np.ndarray:
    """What 1 dB more gain on the audio adds to each input coefficient: float32 (coefficients,).

    Every mel band's dB level rises by the gain (power_to_db's 80 dB floor is relative to the window's
    loudest bin, so it rises too); the orthonormal DCT turns that into MFCC 0 rising by sqrt(bands) and
    the other coefficients unchanged. So a gain is exactly a constant shift of the input, which the
    training loop applies as gain augmentation (recipe gain_min_db / gain_max_db) without audio work.
    """
    if settings.kind == "mfcc":
        shift = np.zeros(settings.n_coefficients, dtype=np.float32)
        shift[0] = np.sqrt(MFCC_MEL_BANDS)
        return shift
    if settings.kind == "logmel":
        return np.ones(settings.n_coefficients, dtype=np.float32)
    raise ValueError(f"feature kind {settings.kind!r} not supported; use mfcc or logmel")


def mfcc_frames(audio: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """MFCC of exactly `input_samples` of audio at the feature rate: float32 (frames, coefficients)."""
    fitted = fit_length(audio, settings.input_samples, settings.pad_position)
    if settings.kind == "mfcc":
        feature = librosa.feature.mfcc(
            y=fitted,
            sr=settings.sample_rate_hz,
            n_mfcc=settings.n_coefficients,
            n_fft=settings.n_fft,
            hop_length=settings.hop_length,
        )
    elif settings.kind == "logmel":
        mel = librosa.feature.melspectrogram(
            y=fitted,
            sr=settings.sample_rate_hz,
            n_mels=settings.n_coefficients,
            n_fft=settings.n_fft,
            hop_length=settings.hop_length,
        )
        feature = librosa.power_to_db(mel)
    else:
        raise ValueError(f"feature kind {settings.kind!r} not supported; use mfcc or logmel")
    return feature.T.astype(np.float32)


ONSET_FRAME_S = 0.02  # RMS frames of the onset and level normalisation
ACTIVE_BELOW_PEAK_DB = 40.0  # frames this far below the loudest count as active for the level


def frame_levels_db(audio: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """RMS of each ONSET_FRAME_S frame in dB relative to the loudest frame (empty for shorter audio)."""
    frame = max(1, int(ONSET_FRAME_S * sample_rate_hz))
    usable = len(audio) // frame * frame
    rms = np.sqrt(np.mean(np.square(audio[:usable].reshape(-1, frame)), axis=1) + 1e-12)
    return 20 * np.log10(rms / rms.max()) if usable else rms


def normalise_level(audio: np.ndarray, sample_rate_hz: int, settings: FeatureSettings) -> np.ndarray:
    """Scale the utterance so its active frames' RMS is `level_dbfs` (off when the card leaves it unset)."""
    if settings.level_dbfs is None:
        return audio
    frame = max(1, int(ONSET_FRAME_S * sample_rate_hz))
    levels = frame_levels_db(audio, sample_rate_hz)
    if levels.size == 0:
        return audio
    active = np.repeat(levels > -ACTIVE_BELOW_PEAK_DB, frame)
    rms = float(np.sqrt(np.mean(np.square(audio[: len(active)][active]))))
    if rms < 1e-6:
        return audio
    return np.clip(audio * (10 ** (settings.level_dbfs / 20) / rms), -1.0, 1.0).astype(np.float32)


def normalise_onset(audio: np.ndarray, sample_rate_hz: int, settings: FeatureSettings) -> np.ndarray:
    """Cut leading non-speech, then put up to `onset_lead_in_s` of silence before the speech.

    The network's per-frame BatchNorm makes it sensitive to where speech sits in its 4.5 s input;
    trained on whole clips (speech ~1 s in), it is served VAD segments whose speech starts at once.
    """
    if settings.onset_lead_in_s is None:
        return audio
    frame = max(1, int(ONSET_FRAME_S * sample_rate_hz))
    level_db = frame_levels_db(audio, sample_rate_hz)
    if level_db.size == 0:
        return audio
    first_speech_frame = int(np.argmax(level_db > settings.onset_threshold_db))
    speech = audio[first_speech_frame * frame :]
    # An utterance that fits one input window keeps fitting (as much lead-in as there is room for);
    # a longer one is windowed anyway and gets the whole lead-in.
    lead_in_samples = int(settings.onset_lead_in_s * sample_rate_hz)
    room_samples = settings.input_samples * sample_rate_hz // settings.sample_rate_hz - len(speech)
    if room_samples >= 0:
        lead_in_samples = min(lead_in_samples, room_samples)
    return np.concatenate([np.zeros(lead_in_samples, dtype=np.float32), speech])


WindowFeatures = Callable[[np.ndarray], np.ndarray]
"""Exactly `input_samples` of audio at the feature rate -> float32 (frames, coefficients)."""


def utterance_windows(
    audio: np.ndarray, sample_rate_hz: int, settings: FeatureSettings, features: WindowFeatures | None = None
) -> np.ndarray:
    """All input windows of one utterance: float32 (windows, frames, coefficients).

    Audio up to `input_samples` long gives one zero-padded window (as in training); longer audio gives
    overlapping windows whose scores the model averages (`long_input="windows"`), or the first one.
    `features` computes one window (default: librosa, `mfcc_frames`; the served fast path passes
    model/fast_features.py's MfccTransform).
    """
    if features is None:
        features = partial(mfcc_frames, settings=settings)
    resampled = resample(audio, sample_rate_hz, settings.sample_rate_hz)
    at_feature_rate = normalise_onset(normalise_level(resampled, settings.sample_rate_hz, settings),
                                      settings.sample_rate_hz, settings)
    return np.stack(
        [
            features(fit_length(at_feature_rate[start : start + settings.input_samples], settings.input_samples,
                                settings.pad_position))
            for start in window_starts(len(at_feature_rate), settings)
        ]
    )


def batch_windows(
    waveforms: Sequence[np.ndarray], sample_rate_hz: int, settings: FeatureSettings,
    features: WindowFeatures | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Windows of several utterances stacked, and how many windows each utterance has."""
    per_utterance = [utterance_windows(audio, sample_rate_hz, settings, features) for audio in waveforms]
    return np.concatenate(per_utterance), [len(windows) for windows in per_utterance]
