"""The recipe learns: the network overfits a small set of real speech, and training resumes exactly."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from _model_helpers import FIXTURES, SPEECH_WAV
from emostream.model.feature_table import FeatureTable
from emostream.model.features import utterance_windows
from emostream.model.plb import PLBConfig
from emostream.model.training import TrainingRecipe, learning_rate_factor, predict_logits, train_plb
from emostream.schemas.model_card import FeatureSettings

RAVDESS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ravdess"
CPU = torch.device("cpu")


def fixture_utterances() -> tuple[np.ndarray, np.ndarray]:
    """The three spoken utterances of tests/fixtures/speech.wav as features, each its own class."""
    audio, rate_hz = sf.read(SPEECH_WAV, dtype="float32")
    spans = json.loads((FIXTURES / "speech.json").read_text())["utterances"]
    features = [
        utterance_windows(audio[int(s["start_ms"] * rate_hz / 1000) : int(s["end_ms"] * rate_hz / 1000)], rate_hz,
                          FeatureSettings())[0]
        for s in spans
    ]
    return np.stack(features), np.arange(len(features))


def test_lr_schedule_is_the_thesis_one() -> None:
    recipe = TrainingRecipe()
    assert [learning_rate_factor(e, recipe) for e in (0, 69, 70, 89, 90, 110)] == pytest.approx(
        [1, 1, 0.15, 0.15, 0.0225, 0.15**3])
    compressed = TrainingRecipe.for_epochs(40)
    assert learning_rate_factor(24, compressed) == 1 and learning_rate_factor(25, compressed) == pytest.approx(0.15)


def test_overfits_real_speech_utterances() -> None:
    features, labels = fixture_utterances()
    features, labels = np.repeat(features, 8, axis=0), np.repeat(labels, 8)  # 90 optimiser steps in all
    _, history = train_plb(features, labels, PLBConfig(num_classes=3), TrainingRecipe(epochs=30, batch_size=8),
                           CPU, progress=False)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["train_accuracy"] >= 0.9


@pytest.mark.skipif(not (RAVDESS / "labels.csv").is_file(), reason=f"RAVDESS not found at {RAVDESS}")
def test_learns_real_emotional_speech(tmp_path: Path) -> None:
    from emostream.model.datasets import load_corpus
    from emostream.model.feature_cache import extract_features

    clips = [c for c in load_corpus(RAVDESS) if c.speaker in ("01", "02") and c.label in ("angry", "calm")][:16]
    table, errors = extract_features(clips, FeatureSettings(), workers=1)
    assert not errors and len(table.labels) == 2
    model, history = train_plb(table.features, table.label_ids, PLBConfig(num_classes=2),
                               TrainingRecipe(epochs=30, batch_size=8), CPU, progress=False)
    accuracy = (predict_logits(model, table.features, CPU).argmax(axis=1) == table.label_ids).mean()
    assert accuracy >= 0.9, history[-1]


def test_training_resumes_where_it_stopped(tmp_path: Path) -> None:
    features, labels = fixture_utterances()
    config = PLBConfig(num_classes=3)
    recipe = TrainingRecipe(epochs=4, batch_size=3, checkpoint_every_epochs=2)
    straight, _ = train_plb(features, labels, config, recipe, CPU, progress=False)
    state = tmp_path / "state.pt"
    train_plb(features, labels, config, TrainingRecipe(epochs=2, batch_size=3, checkpoint_every_epochs=2), CPU,
              state_path=state, progress=False)
    resumed, history = train_plb(features, labels, config, recipe, CPU, state_path=state, progress=False)
    assert [h["epoch"] for h in history] == [2, 3]
    for name, tensor in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, msg=name)


def test_feature_table_round_trip(tmp_path: Path) -> None:
    features, labels = fixture_utterances()
    table = FeatureTable(features, labels, ["a", "b", "c"], ["s1", "s1", "s2"], ["x", "y", "z"])
    table.save(tmp_path / "t.npz")
    loaded = FeatureTable.load(tmp_path / "t.npz")
    np.testing.assert_array_equal(loaded.features, features)
    assert loaded.labels == ["a", "b", "c"] and loaded.speakers == ["s1", "s1", "s2"]
