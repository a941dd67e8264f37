"""Waveform variants of the feature bank: deterministic, rate and label kept, each does what it says."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from _model_helpers import FIXTURES, SPEECH_WAV
from emostream.model.datasets import LabelledClip
from emostream.model.feature_cache import extract_features
from emostream.model.g711 import mulaw_decode, mulaw_encode
from emostream.model.plb import PLBConfig
from emostream.model.recipes import TrainingRecipe
from emostream.model.training import train_plb
from emostream.model.waveform_augment import VARIANTS, variant
from emostream.schemas.model_card import FeatureSettings


@pytest.fixture(scope="module")
def utterance() -> tuple[np.ndarray, int]:
    audio, rate_hz = sf.read(SPEECH_WAV, dtype="float32")
    span = json.loads((FIXTURES / "speech.json").read_text())["utterances"][0]
    return audio[int(span["start_ms"] * rate_hz / 1000) : int(span["end_ms"] * rate_hz / 1000)], rate_hz


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_variant_is_deterministic_and_stays_audio(utterance: tuple[np.ndarray, int], name: str) -> None:
    audio, rate_hz = utterance
    first, again = variant(audio, rate_hz, name, seed=5), variant(audio, rate_hz, name, seed=5)
    np.testing.assert_array_equal(first, again)
    assert first.dtype == np.float32 and np.all(np.isfinite(first)) and np.abs(first).max() <= 1.0
    assert 0.15 * len(audio) <= len(first) <= 1.15 * len(audio)


def test_speed_changes_the_length_by_the_factor(utterance: tuple[np.ndarray, int]) -> None:
    audio, rate_hz = utterance
    assert len(variant(audio, rate_hz, "speed-1.1", 0)) == pytest.approx(len(audio) / 1.1, rel=0.01)
    assert len(variant(audio, rate_hz, "speed-0.9", 0)) == pytest.approx(len(audio) / 0.9, rel=0.01)


def test_noise_sits_20_db_below_the_speech(utterance: tuple[np.ndarray, int]) -> None:
    audio, rate_hz = utterance
    noise = variant(audio, rate_hz, "noise-20db", 1) - audio
    snr_db = 10 * np.log10(np.mean(audio**2) / np.mean(noise**2))
    assert snr_db == pytest.approx(20, abs=0.5)


def test_telephony_limits_the_band_to_4_khz(utterance: tuple[np.ndarray, int]) -> None:
    audio, rate_hz = utterance
    narrow = variant(audio, rate_hz, "telephony", 0)
    assert len(narrow) == pytest.approx(len(audio), abs=2)
    spectrum = np.abs(np.fft.rfft(narrow)) ** 2
    frequencies = np.fft.rfftfreq(len(narrow), 1 / rate_hz)
    assert spectrum[frequencies > 4_200].sum() < 1e-3 * spectrum.sum()


def test_mulaw_codec_round_trips_every_code() -> None:
    codes = np.arange(256, dtype=np.uint8)
    decoded = mulaw_decode(codes)
    again = mulaw_encode(decoded)
    # 0x7F and 0xFF both decode to 0 (G.711's two zeros); every other code is its own round trip
    assert np.array_equal(mulaw_decode(again), decoded)
    assert int(np.abs(decoded.astype(np.int32)).max()) == 32124


def test_crop_is_a_piece_of_the_speech(utterance: tuple[np.ndarray, int]) -> None:
    audio, rate_hz = utterance
    piece = variant(audio, rate_hz, "crop", 3)
    assert 0.5 * rate_hz * 0.99 <= len(piece) <= min(len(audio), 3.0 * rate_hz)
    start = next(i for i in range(len(audio) - len(piece) + 1) if np.array_equal(audio[i : i + len(piece)], piece))
    assert start >= 0


def test_feature_bank_trains_one_variant_per_clip_per_epoch(tmp_path: Path, utterance: tuple[np.ndarray, int]) -> None:
    audio, rate_hz = utterance
    clips = []
    for n, gain in enumerate((1.0, 0.6, 0.8, 0.4)):
        path = tmp_path / f"c{n}.wav"
        sf.write(path, audio * gain, rate_hz)
        clips.append(LabelledClip(path, ["a", "b"][n % 2], f"s{n}"))
    table, errors = extract_features(clips, FeatureSettings(), workers=1, variants=["telephony", "crop"])
    assert not errors and table.variants == ["original", "telephony", "crop"]
    assert table.features.shape == (4, 3, 196, 39)
    np.testing.assert_allclose(table.original_features(), extract_features(clips, FeatureSettings(), workers=1)[0]
                               .features, rtol=0, atol=0)
    table.save(tmp_path / "bank.npz")
    _, history = train_plb(table.features, table.label_ids, PLBConfig(num_classes=2),
                           TrainingRecipe(epochs=2, batch_size=2, compile=False), torch.device("cpu"),
                           progress=False)
    assert len(history) == 2 and np.isfinite(history[-1].loss)
