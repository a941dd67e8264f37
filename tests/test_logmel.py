"""The ASR-multitask model's features: 80 log-mel bands, 25 ms windows every 10 ms, each band's
utterance mean removed; any input rate resampled to 16 kHz."""

import json

import numpy as np
import soundfile as sf
from _model_helpers import FIXTURES, SPEECH_WAV
from emostream.model.features import resample
from emostream.model.logmel import HOP_SAMPLES, LOGMEL_SETTINGS, N_MELS, WINDOW_SAMPLES, logmel_frame_count, logmel_frames


def _first_utterance() -> tuple[np.ndarray, int]:
    audio, rate_hz = sf.read(SPEECH_WAV, dtype="float32")
    span = json.loads((FIXTURES / "speech.json").read_text())["utterances"][0]
    return audio[int(span["start_ms"] * rate_hz / 1000) : int(span["end_ms"] * rate_hz / 1000)], rate_hz


def test_frames_are_10_ms_apart_with_80_zero_mean_bands() -> None:
    assert (WINDOW_SAMPLES, HOP_SAMPLES, N_MELS) == (400, 160, 80)  # 25 ms, 10 ms at 16 kHz
    speech, rate_hz = _first_utterance()
    features = logmel_frames(speech, rate_hz)
    samples_16k = len(resample(speech, rate_hz, 16_000))
    assert features.shape == (logmel_frame_count(samples_16k), N_MELS) == (1 + (samples_16k - 400) // 160, 80)
    assert abs(features.shape[0] - samples_16k / 160) <= 3  # ~100 frames per second
    np.testing.assert_allclose(features.mean(axis=0), 0.0, atol=1e-4)
    assert features.std(axis=0).min() > 0.1  # speech varies in every band


def test_level_changes_cancel_and_rates_agree() -> None:
    speech, rate_hz = _first_utterance()
    reference = logmel_frames(speech, rate_hz)
    # A gain is an offset in log units, which the mean removes (given a noise floor: bins of digital
    # silence sit at the power floor whatever the gain).
    noisy = speech + 1e-3 * np.random.default_rng(0).standard_normal(len(speech)).astype(np.float32)
    np.testing.assert_allclose(logmel_frames(noisy * 0.25, rate_hz), logmel_frames(noisy, rate_hz), atol=2e-3)
    at_8k = resample(speech, rate_hz, 8_000)
    telephone = logmel_frames(at_8k, 8_000)  # upsampled: the bands above 4 kHz are empty
    assert abs(telephone.shape[0] - reference.shape[0]) <= 1
    low = slice(0, 50)  # bands below ~2.5 kHz survive the 8 kHz round trip
    n = min(len(telephone), len(reference))
    correlation = np.corrcoef(telephone[:n, low].ravel(), reference[:n, low].ravel())[0, 1]
    assert correlation > 0.9


def test_audio_shorter_than_a_window_gives_one_frame() -> None:
    assert logmel_frames(np.zeros(100, np.float32), 16_000).shape == (1, 80)
    assert LOGMEL_SETTINGS.kind == "logmel-utterance-mean"
