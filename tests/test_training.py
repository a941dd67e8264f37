"""The training engine: the recipe learns real speech, an interrupted run resumes to the same weights,
compiled and eager agree, and a state file that does not belong to the run is refused by name."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from _model_helpers import FIXTURES, SPEECH_WAV
from emostream.model.feature_table import FeatureTable
from emostream.model.features import input_shift_per_db, utterance_windows
from emostream.model.plb import PLBConfig
from emostream.model.recipes import TrainingRecipe, learning_rate_factor, production_recipe
from emostream.model.training import TrainingStateError, predict_logits, train_plb
from emostream.schemas.model_card import FeatureSettings

RAVDESS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ravdess"
CPU = torch.device("cpu")
MFCC_SHIFT = input_shift_per_db(FeatureSettings())  # the production recipe's gain augmentation needs it


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


def test_production_schedule_warms_up_then_decays_to_zero() -> None:
    recipe = production_recipe(epochs=20)
    factors = [learning_rate_factor(e, recipe) for e in range(20)]
    assert factors[:3] == pytest.approx([0.25, 0.5, 0.75]) and factors[3] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(factors[3:])) and factors[-1] < 0.01


def test_overfits_real_speech_utterances() -> None:
    features, labels = fixture_utterances()
    features, labels = np.repeat(features, 4, axis=0), np.repeat(labels, 4)  # 60 optimiser steps in all
    _, history = train_plb(features, labels, PLBConfig(num_classes=3, dropout=0.0),  # the shipped recipe's dropout
                           TrainingRecipe(epochs=20, batch_size=4, compile=False), CPU, progress=False)
    assert history[-1].loss < 0.5 * history[0].loss
    assert history[-1].train_accuracy >= 0.9


@pytest.mark.skipif(not (RAVDESS / "labels.csv").is_file(), reason=f"RAVDESS not found at {RAVDESS}")
def test_learns_real_emotional_speech(tmp_path: Path) -> None:
    from emostream.model.datasets import load_corpus
    from emostream.model.feature_cache import extract_features

    clips = [c for c in load_corpus(RAVDESS) if c.speaker in ("01", "02") and c.label in ("angry", "calm")][:16]
    table, errors = extract_features(clips, FeatureSettings(), workers=1)
    assert not errors and len(table.labels) == 2
    model, history = train_plb(table.features, table.label_ids, PLBConfig(num_classes=2),
                               TrainingRecipe(epochs=30, batch_size=8, compile=False), CPU, progress=False)
    accuracy = (predict_logits(model, table.features, CPU).argmax(axis=1) == table.label_ids).mean()
    assert accuracy >= 0.9, history[-1]


class Interrupted(Exception):
    pass


def _interrupt_at(epoch: int):
    def stop(record) -> None:
        if record.epoch == epoch:
            raise Interrupted
    return stop


def _four_clips() -> tuple[np.ndarray, np.ndarray]:
    features, labels = fixture_utterances()
    return np.concatenate([features, features[:1]]), np.concatenate([labels, labels[:1]])


@pytest.mark.parametrize("recipe", [
    TrainingRecipe(epochs=4, batch_size=3, checkpoint_every_epochs=2, compile=False),
    production_recipe(epochs=4, batch_size=3, checkpoint_every_epochs=2, compile=False, mixup_alpha=0.2,
                      time_masks=2, time_mask_frames=20, coefficient_masks=2, coefficient_mask_width=4),  # all on
], ids=["thesis", "production"])
def test_interrupted_training_resumes_to_the_uninterrupted_weights(tmp_path: Path, recipe: TrainingRecipe) -> None:
    features, labels = _four_clips()  # 4 clips, batch 3: a different dropped remainder every epoch
    config = PLBConfig(num_classes=3, input_normalisation="per-coefficient")
    straight, straight_history = train_plb(features, labels, config, recipe, CPU, progress=False,
                                           shift_per_db=MFCC_SHIFT)
    state = tmp_path / "state.pt"
    with pytest.raises(Interrupted):  # dies in epoch 3, after the checkpoint of epoch 2
        train_plb(features, labels, config, recipe, CPU, state_path=state, progress=False,
                  on_epoch_end=_interrupt_at(2), shift_per_db=MFCC_SHIFT)
    resumed, history = train_plb(features, labels, config, recipe, CPU, state_path=state, progress=False,
                                 shift_per_db=MFCC_SHIFT)
    assert [h.epoch for h in history] == [0, 1, 2, 3]  # the saved history continues
    assert [h.loss for h in history] == pytest.approx([h.loss for h in straight_history], abs=1e-6)
    for name, tensor in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, msg=name, rtol=0, atol=1e-7)


def test_a_state_of_another_recipe_or_data_set_is_refused_by_name(tmp_path: Path) -> None:
    features, labels = _four_clips()
    config = PLBConfig(num_classes=3)
    state = tmp_path / "state.pt"
    recipe = TrainingRecipe(epochs=2, batch_size=3, checkpoint_every_epochs=1, compile=False)
    with pytest.raises(Interrupted):
        train_plb(features, labels, config, recipe, CPU, state_path=state, progress=False,
                  on_epoch_end=_interrupt_at(0))
    other = production_recipe(epochs=2, batch_size=3, compile=False)
    with pytest.raises(TrainingStateError, match=r"state\.pt: written for another recipe"):
        train_plb(features, labels, config, other, CPU, state_path=state, progress=False, shift_per_db=MFCC_SHIFT)
    with pytest.raises(TrainingStateError, match=r"state\.pt: written for another data"):
        train_plb(features[:3], labels[:3], config, recipe, CPU, state_path=state, progress=False)
    extended = TrainingRecipe(epochs=3, batch_size=3, checkpoint_every_epochs=1, compile=False)
    _, history = train_plb(features, labels, config, extended, CPU, state_path=state, progress=False)
    assert [h.epoch for h in history] == [0, 1, 2]  # a longer run of the same step schedule resumes


def test_a_corrupt_or_partial_state_is_refused_by_name(tmp_path: Path) -> None:
    features, labels = _four_clips()
    recipe = TrainingRecipe(epochs=1, batch_size=3, compile=False)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 not a torch file")
    with pytest.raises(TrainingStateError, match="corrupt.pt: not a readable training state"):
        train_plb(features, labels, PLBConfig(num_classes=3), recipe, CPU, state_path=corrupt, progress=False)
    partial = tmp_path / "partial.pt"
    torch.save({"format": 2, "model": {}}, partial)
    with pytest.raises(TrainingStateError, match=r"partial.pt: partial training state, missing \['generators'"):
        train_plb(features, labels, PLBConfig(num_classes=3), recipe, CPU, state_path=partial, progress=False)


# torch.compile's first build of the training step takes ~100 s on an idle 2-core machine and several
# times that under load; the generous timeout is a hang guard, not a speed bound. The compiled step is
# the only compiled graph training and serving use (the served network runs in ONNX Runtime), so the
# forward pass is compared here, through the losses and the trained models' outputs, not on its own.
@pytest.mark.timeout(1200)
def test_compiled_training_learns_like_eager() -> None:
    features, labels = _four_clips()
    recipe = TrainingRecipe(epochs=3, batch_size=4)
    eager, eager_history = train_plb(features, labels, PLBConfig(num_classes=3),
                                     TrainingRecipe(epochs=3, batch_size=4, compile=False), CPU, progress=False)
    compiled, compiled_history = train_plb(features, labels, PLBConfig(num_classes=3), recipe, CPU, progress=False)
    assert [h.loss for h in compiled_history] == pytest.approx([h.loss for h in eager_history], rel=1e-3)
    for name, tensor in eager.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[name], tensor, msg=name, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(predict_logits(compiled, features, CPU), predict_logits(eager, features, CPU),
                               rtol=1e-3, atol=1e-4)


def test_feature_table_round_trip(tmp_path: Path) -> None:
    features, labels = fixture_utterances()
    table = FeatureTable(features, labels, ["a", "b", "c"], ["s1", "s1", "s2"], ["x", "y", "z"])
    table.save(tmp_path / "t.npz")
    loaded = FeatureTable.load(tmp_path / "t.npz")
    np.testing.assert_array_equal(loaded.features, features)
    assert loaded.labels == ["a", "b", "c"] and loaded.speakers == ["s1", "s1", "s2"]
