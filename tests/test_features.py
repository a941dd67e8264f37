"""Feature extraction as the thesis: 39 MFCC x 196 frames from 100,000 samples at 22,050 Hz."""

import numpy as np
import pytest

from emostream.model.features import INPUT_FRAMES, fit_length, utterance_windows, window_starts
from emostream.schemas.model_card import FeatureSettings

SETTINGS = FeatureSettings()


def tone(seconds: float, rate_hz: int) -> np.ndarray:
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_input_is_196_frames_of_39_coefficients() -> None:
    assert INPUT_FRAMES == 196
    windows = utterance_windows(tone(2.0, 16_000), 16_000, SETTINGS)
    assert windows.shape == (1, 196, 39)
    assert windows.dtype == np.float32


def test_pad_and_trim() -> None:
    assert len(fit_length(np.ones(10, np.float32), 25)) == 25
    assert fit_length(np.ones(10, np.float32), 25)[10:].sum() == 0
    assert len(fit_length(np.ones(30, np.float32), 25)) == 25


@pytest.mark.parametrize(("seconds", "windows"), [(0.3, 1), (4.5, 1), (6.0, 2), (10.0, 4)])
def test_long_utterances_become_overlapping_windows(seconds: float, windows: int) -> None:
    samples = int(seconds * SETTINGS.sample_rate_hz)
    starts = window_starts(samples, SETTINGS)
    assert len(starts) == windows
    assert starts[0] == 0
    assert starts[-1] + SETTINGS.input_samples >= samples or windows == 1


def test_resampling_from_telephone_rate_keeps_duration() -> None:
    # 1 s at 8 kHz is 22,050 samples at the feature rate: 44 frames of speech, the rest padding
    windows = utterance_windows(tone(1.0, 8_000), 8_000, SETTINGS)
    energy = windows[0, :, 0]  # c0 tracks log energy
    assert energy[:40].mean() > energy[60:].mean() + 10
