"""Per-call standardisation (model/call_statistics.py): what training and serving measure a call against."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from emostream.model.call_statistics import (
    CallPrior,
    CallStatistics,
    speech_frames,
    standardise_partial_calls,
    standardise_per_speaker,
    standardise_utterances,
)
from emostream.model.features import utterance_windows
from emostream.model.recipes import TrainingRecipe
from emostream.schemas.model_card import FeatureSettings

from tests._benchmark_helpers import load_benchmark

SPEECH = Path(__file__).parent / "fixtures" / "speech.wav"


def speech_windows(gains_db: list[float], seconds: float = 3.0, offset_s: float = 0.0) -> np.ndarray:
    """A piece of the fixture at each gain, as (gains, frames, coefficients) model inputs."""
    speech, rate_hz = sf.read(SPEECH, dtype="float32")
    speech = 0.5 * speech / np.abs(speech).max()
    piece = speech[int(offset_s * rate_hz) : int((offset_s + seconds) * rate_hz)]
    return np.stack([utterance_windows(piece * np.float32(10 ** (g / 20)), rate_hz, FeatureSettings())[0]
                     for g in gains_db])


def test_a_speakers_gain_is_removed_and_their_speech_frames_are_standardised() -> None:
    quiet, loud = speech_windows([-12.0, 6.0])
    # Two speakers, one clip each, two variants per clip (the second 18 dB louder or quieter).
    features = np.stack([np.stack([quiet, loud]), np.stack([loud, quiet])])
    normalised = standardise_per_speaker(features, ["a", "b"])
    np.testing.assert_allclose(normalised[0, 0], normalised[1, 1], atol=1e-4)  # same audio, own statistics
    np.testing.assert_allclose(normalised[0, 0], normalised[0, 1], atol=2e-2)  # the gain is gone
    speech = speech_frames(features[0, 0])
    assert 0.3 < speech.mean() < 0.9  # 3 s of speech in a 4.5 s window: the padding is not speech
    frames = normalised[0, 0][speech]
    np.testing.assert_allclose(frames.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(frames.std(axis=0), 1.0, atol=1e-3)
    assert normalised[0, 0][~speech, 0].max() < frames[:, 0].min()  # padding stays below speech
    np.testing.assert_array_equal(standardise_per_speaker(features[:, 0], ["a", "b"]), normalised[:, 0])


def test_a_speaker_without_speech_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="speaker 'a', variant 0: .*2 or more speech frames"):
        standardise_per_speaker(np.zeros((1, 196, 39), np.float32), ["a"])


def test_a_call_at_any_gain_gets_the_same_input_and_the_prior_fades() -> None:
    first, second = speech_windows([0.0], offset_s=0.0)[0], speech_windows([0.0], offset_s=3.0)[0]
    prior = CallPrior.of(np.stack([first, second]) + 5.0, frames=400.0)  # a prior not at this call's level
    heard = {}
    for gain_db in (0.0, 12.0):
        shift = np.float32(gain_db * np.sqrt(128))  # a gain moves MFCC 0 alone (features.input_shift_per_db)
        windows = np.stack([first, second]).copy()
        windows[..., 0] += shift
        call = CallStatistics()
        heard[gain_db] = standardise_utterances(windows, [1, 1], [call, call], prior)
        assert call.frames == speech_frames(windows).sum()  # both utterances counted
    np.testing.assert_allclose(heard[0.0], heard[12.0], atol=1e-3)
    # With the prior the first utterance is measured against more than itself; without one it is
    # exactly standardised by its own frames.
    alone = CallStatistics()
    own = standardise_utterances(first[None], [1], [alone], None)[0][speech_frames(first)]
    np.testing.assert_allclose(own.mean(axis=0), 0.0, atol=1e-4)
    assert np.abs(heard[0.0][0][speech_frames(first)].mean(axis=0)).max() > 0.05


def test_statistics_and_utterances_must_pair_up() -> None:
    with pytest.raises(ValueError, match="2 utterances but statistics of 1 calls"):
        standardise_utterances(np.zeros((2, 196, 39), np.float32), [1, 1], [CallStatistics()], None)


def test_the_level_only_ablation_moves_mfcc_0_alone() -> None:
    bench = load_benchmark("call_normalisation")
    quiet, loud = speech_windows([-12.0, 6.0])
    features = np.stack([np.stack([quiet]), np.stack([loud])])
    moved = bench.level_per_speaker(features, ["a", "b"])
    np.testing.assert_array_equal(moved[..., 1:], features[..., 1:])
    np.testing.assert_allclose(moved[0, 0, :, 0], moved[1, 0, :, 0], atol=0.3)  # 18 dB (204 in MFCC 0) before


GAIN = TrainingRecipe(gain_min_db=-10.0, gain_max_db=25.0)
PLAIN = TrainingRecipe()


def test_training_inputs_refuse_gain_and_clips_without_a_speaker_by_name() -> None:
    from emostream.model.feature_table import FeatureTable, FeatureTableError

    windows = speech_windows([0.0, -6.0])
    table = FeatureTable(windows, np.array([0, 1]), ["a", "b"], ["s1", ""], ["x.wav", "y.wav"], FeatureSettings())
    same, shift, prior = table.training_inputs(False, np.arange(2), 400.0, GAIN, "t.npz")
    assert same is table.features and shift is not None and prior is None
    with pytest.raises(FeatureTableError, match="t.npz: call normalisation removes a call's gain"):
        table.training_inputs(True, np.arange(2), 400.0, GAIN, "t.npz")
    with pytest.raises(FeatureTableError, match="t.npz: 1 clips have no speaker"):
        table.training_inputs(True, np.arange(2), 400.0, PLAIN, "t.npz")
    table.speakers = ["s1", "s2"]
    inputs, shift, prior = table.training_inputs(True, np.array([0]), 400.0, PLAIN, "t.npz")
    assert shift is None and prior is not None and prior.frames == 400.0
    np.testing.assert_allclose(prior.mean, windows[0][speech_frames(windows[0])].astype(np.float64).mean(axis=0))
    np.testing.assert_array_equal(inputs, standardise_per_speaker(windows, ["s1", "s2"]))


def test_partial_calls_standardise_variants_as_a_calls_kth_utterance_and_keep_the_clips_as_recorded() -> None:
    from emostream.model.feature_table import FeatureTable, FeatureTableError

    # Two speakers with three clips each, two variants per clip (as recorded; 9 dB louder).
    clips = [speech_windows([gain], seconds=2.0, offset_s=offset)[0] for gain, offset in
             [(0.0, 0.0), (-6.0, 1.0), (3.0, 2.0), (-3.0, 0.5), (0.0, 1.5), (-9.0, 2.5)]]
    louder = [speech_windows([gain + 9.0], seconds=2.0, offset_s=offset)[0] for gain, offset in
              [(0.0, 0.0), (-6.0, 1.0), (3.0, 2.0), (-3.0, 0.5), (0.0, 1.5), (-9.0, 2.5)]]
    bank = np.stack([np.stack(pair) for pair in zip(clips, louder, strict=True)])
    speakers = ["a", "a", "a", "b", "b", "b"]
    prior = CallPrior.of(bank[:, 0], 400.0)
    inputs = standardise_partial_calls(bank, speakers, prior, np.random.default_rng(0))
    assert inputs.shape == bank.shape and inputs.dtype == np.float32
    # the clips as recorded (what evaluation scores) are standardised with all of their speaker's clips
    np.testing.assert_array_equal(inputs[:, 0], standardise_per_speaker(bank[:, 0], speakers))
    # each other variant as the k-th utterance of a call of that variant: itself and k - 1 of the speaker's
    # other clips, blended with the prior; one of these standardisations, k and the others drawn at random
    for row, speaker in enumerate(speakers):
        own = [r for r, s in enumerate(speakers) if s == speaker and r != row]
        candidates = [[row], *[[row, r] for r in own], [row, *own]]
        distances = []
        for chosen in candidates:
            call = CallStatistics()
            call.add(bank[chosen, 1])
            distances.append(np.abs(inputs[row, 1] - call.standardise(bank[row, 1], prior)).max())
        assert min(distances) < 1e-4, (row, distances)
    np.testing.assert_array_equal(inputs, standardise_partial_calls(bank, speakers, prior, np.random.default_rng(0)))
    # through a feature table: only with call normalisation and a waveform bank, errors naming the table
    table = FeatureTable(bank, np.array([0, 1, 0, 1, 0, 1]), ["x", "y"], speakers, [f"{i}.wav" for i in range(6)],
                         FeatureSettings(), variants=["original", "gain-9db"])
    partial = TrainingRecipe(partial_call_statistics=True)
    trained, shift, table_prior = table.training_inputs(True, np.arange(6), 400.0, partial, "bank.npz")
    np.testing.assert_array_equal(trained, inputs)
    assert shift is None and table_prior is not None
    with pytest.raises(FeatureTableError, match="bank.npz: the recipe's partial_call_statistics needs call norm"):
        table.training_inputs(False, np.arange(6), 400.0, partial, "bank.npz")
    clips_only = FeatureTable(bank[:, 0], table.label_ids, table.labels, speakers, table.paths, FeatureSettings())
    with pytest.raises(FeatureTableError, match="clips.npz: partial-call statistics need a feature bank"):
        clips_only.training_inputs(True, np.arange(6), 400.0, partial, "clips.npz")
