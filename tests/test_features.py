"""Feature extraction as the thesis: 39 MFCC x 196 frames from 100,000 samples at 22,050 Hz."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from emostream.model.features import (
    fit_length,
    input_shift_per_db,
    normalise_level,
    normalise_onset,
    utterance_windows,
    window_starts,
)
from emostream.schemas.model_card import FeatureSettings

SETTINGS = FeatureSettings()
SPEECH = Path(__file__).parent / "fixtures" / "speech.wav"


def tone(seconds: float, rate_hz: int) -> np.ndarray:
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_input_is_196_frames_of_39_coefficients() -> None:
    assert SETTINGS.input_frames == 196  # 1 + 100,000 // 512 centred frames
    windows = utterance_windows(tone(2.0, 16_000), 16_000, SETTINGS)
    assert windows.shape == (1, 196, 39)
    assert windows.dtype == np.float32


def test_pad_and_trim() -> None:
    assert len(fit_length(np.ones(10, np.float32), 25)) == 25
    assert fit_length(np.ones(10, np.float32), 25)[10:].sum() == 0
    assert len(fit_length(np.ones(30, np.float32), 25)) == 25
    centred = fit_length(np.ones(10, np.float32), 25, "centre")  # 15 zeros: 7 before, 8 after
    assert len(centred) == 25 and centred[:7].sum() == 0 and centred[7:17].sum() == 10 and centred[17:].sum() == 0


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


def test_onset_normalisation_puts_speech_after_a_fixed_lead_in() -> None:
    rate_hz = 22_050
    audio = np.concatenate([np.zeros(int(0.3 * rate_hz), np.float32) + 1e-5, tone(1.0, rate_hz)])
    settings = FeatureSettings(onset_lead_in_s=1.0)
    normalised = normalise_onset(audio, rate_hz, settings)
    lead_in = int(1.0 * rate_hz)
    assert np.all(normalised[:lead_in] == 0)
    assert abs(len(normalised) - (lead_in + rate_hz)) <= int(0.02 * rate_hz)  # the 0.3 s lead was cut
    assert np.abs(normalised[lead_in : lead_in + 500]).max() > 0.1
    assert normalise_onset(audio, rate_hz, FeatureSettings()) is audio  # off unless the card sets it


def test_onset_lead_in_never_pushes_an_utterance_into_a_second_window() -> None:
    settings = FeatureSettings(onset_lead_in_s=1.0)
    four_seconds = tone(4.0, settings.sample_rate_hz)
    assert len(normalise_onset(four_seconds, settings.sample_rate_hz, settings)) == settings.input_samples
    assert utterance_windows(tone(4.0, 16_000), 16_000, settings).shape[0] == 1


def test_level_normalisation_makes_features_gain_invariant() -> None:
    settings = FeatureSettings(level_dbfs=-26.0)
    quiet = 0.01 * tone(2.0, 16_000)
    loud = 30 * quiet
    np.testing.assert_allclose(utterance_windows(quiet, 16_000, settings), utterance_windows(loud, 16_000, settings),
                               rtol=1e-4, atol=1e-3)
    scaled = normalise_level(quiet, 16_000, settings)
    assert 20 * np.log10(np.sqrt(np.mean(scaled**2))) == pytest.approx(-26.0, abs=0.2)
    assert normalise_level(quiet, 16_000, FeatureSettings()) is quiet  # off unless the card sets it


@pytest.mark.parametrize("kind", ["mfcc", "logmel"])
def test_a_gain_is_a_constant_shift_of_the_input(kind: str) -> None:
    """What gain augmentation relies on: audio g dB louder gives features + g x input_shift_per_db."""
    settings = FeatureSettings(kind=kind)
    speech, rate_hz = sf.read(SPEECH, dtype="float32")
    speech = 0.5 * speech[: 3 * rate_hz] / np.abs(speech).max()
    base = utterance_windows(speech, rate_hz, settings)
    for gain_db in (-6.0, 12.0):
        louder = utterance_windows(speech * np.float32(10 ** (gain_db / 20)), rate_hz, settings)
        np.testing.assert_allclose(louder, base + gain_db * input_shift_per_db(settings), rtol=1e-4, atol=2e-3)
