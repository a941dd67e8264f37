"""A second corpus added for training (`FeatureTable.with_training_corpus`; the CLI's `--add-data` in
test_train_cli.py): its labels renamed to the main corpus's, its speakers kept apart, trained on in every
fold and never held out."""

from pathlib import Path

import numpy as np
import pytest
from emostream.model.crossval import make_folds
from emostream.model.feature_table import FeatureTable, FeatureTableError
from emostream.schemas.model_card import FeatureSettings


def _table(labels: list[str], label_ids: list[int], speakers: list[str], value: float = 0.0,
           variants: list[str] | None = None) -> FeatureTable:
    shape = (len(label_ids), *([len(variants)] if variants else []), 196, 39)
    return FeatureTable(np.full(shape, value, np.float32), np.array(label_ids), labels, speakers,
                        [f"{value}-{i}.wav" for i in range(len(label_ids))], FeatureSettings(), variants)


def _ravdess_like() -> FeatureTable:
    return _table(["angry", "happy", "sad"], [0, 1, 2, 0, 1, 2, 0, 1], ["01", "01", "01", "02", "02", "03", "03", "04"])


def _emodb_like() -> FeatureTable:
    return _table(["anger", "boredom", "happiness", "sad"], [0, 1, 2, 3, 1], ["03", "03", "08", "08", "08"], value=1.0)


def test_added_clips_take_the_main_labels_their_own_speakers_and_survive_a_save(tmp_path: Path) -> None:
    joined, left_out = _ravdess_like().with_training_corpus(
        _emodb_like(), "emodb", {"anger": "angry", "happiness": "happy"})
    assert left_out == {"boredom": 2}  # no label of the main corpus to go to
    assert joined.labels == ["angry", "happy", "sad"]
    added = np.flatnonzero(joined.training_only)
    assert added.tolist() == [8, 9, 10]
    assert [joined.labels[i] for i in joined.label_ids[added]] == ["angry", "happy", "sad"]  # "sad" kept as named
    assert [joined.speakers[i] for i in added] == ["emodb:03", "emodb:08", "emodb:08"]  # not RAVDESS's actor 03
    assert float(joined.features[added].min()) == 1.0 and float(joined.features[:8].max()) == 0.0
    joined.save(tmp_path / "joined.npz")
    loaded = FeatureTable.load(tmp_path / "joined.npz")
    assert loaded.training_only.tolist() == joined.training_only.tolist()
    assert loaded.same_as(joined) and not loaded.same_as(_ravdess_like())
    relabelled = FeatureTable.load(tmp_path / "joined.npz")
    relabelled.label_ids[-1] = 0
    assert not relabelled.same_as(joined)
    _ravdess_like().save(tmp_path / "plain.npz")
    assert FeatureTable.load(tmp_path / "plain.npz").training_only is None


@pytest.mark.parametrize("protocol", ["speaker", "stratified"])
def test_folds_hold_out_the_main_corpus_alone_and_train_on_every_added_clip(protocol: str) -> None:
    main = _ravdess_like()
    joined, _ = main.with_training_corpus(_emodb_like(), "emodb", {"anger": "angry", "happiness": "happy"})
    folds = 2
    alone = make_folds(main, protocol, folds, seed=0)
    for (train, test), (own_train, own_test) in zip(make_folds(joined, protocol, folds, seed=0), alone, strict=True):
        assert test.tolist() == own_test.tolist()  # the same held-out clips as without the added corpus
        assert sorted(train.tolist()) == sorted([*own_train.tolist(), 8, 9, 10])


def test_an_added_corpus_that_does_not_fit_is_refused_by_name() -> None:
    main = _ravdess_like()
    with pytest.raises(FeatureTableError, match=r"emodb: label map targets \['furious'\] are not labels"):
        main.with_training_corpus(_emodb_like(), "emodb", {"anger": "furious"})
    with pytest.raises(FeatureTableError, match=r"emodb: none of its labels \(boredom\) is a label of the main"):
        main.with_training_corpus(_table(["boredom"], [0], ["03"]), "emodb")
    bank = _table(["angry"], [0], ["03"], variants=["original", "telephony"])
    with pytest.raises(FeatureTableError, match="emodb: clips of shape .* with variants \\['original', 'telephony'\\]"):
        main.with_training_corpus(bank, "emodb")
    other_settings = FeatureTable(np.zeros((1, 196, 39), np.float32), np.array([0]), ["angry"], ["03"], ["x.wav"],
                                  FeatureSettings(n_fft=1_024))
    with pytest.raises(FeatureTableError, match=r"emodb: features made with other settings \(n_fft differ"):
        main.with_training_corpus(other_settings, "emodb")
