"""Batch augmentation: deterministic under a seed, and it keeps what it must (shape, rate, labels)."""

from dataclasses import replace

import torch
from emostream.model.augment import BatchAugmenter, mask_spans
from emostream.model.features import input_shift_per_db
from emostream.model.recipes import TrainingRecipe, production_recipe
from emostream.schemas.model_card import FeatureSettings

ALL_ON = production_recipe(mixup_alpha=0.2, time_masks=2, time_mask_frames=20, coefficient_masks=2,
                           coefficient_mask_width=4)
MFCC_SHIFT = torch.from_numpy(input_shift_per_db(FeatureSettings()))  # what 1 dB of gain adds to the MFCC


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(8, 1, 196, 39, generator=generator), torch.arange(8) % 4


def test_each_augmentation_is_deterministic_under_a_seed() -> None:
    inputs, labels = _batch()
    for recipe in (ALL_ON, replace(ALL_ON, mixup_alpha=0), replace(ALL_ON, time_masks=0), production_recipe()):
        first = BatchAugmenter(recipe, 4, seed=3, shift_per_db=MFCC_SHIFT)(inputs, labels)
        again = BatchAugmenter(recipe, 4, seed=3, shift_per_db=MFCC_SHIFT)(inputs, labels)
        other = BatchAugmenter(recipe, 4, seed=4, shift_per_db=MFCC_SHIFT)(inputs, labels)
        for a, b in zip(first, again, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert not torch.equal(first[0], other[0])


def test_nothing_switched_on_is_the_identity_with_one_hot_targets() -> None:
    inputs, labels = _batch()
    out, targets = BatchAugmenter(TrainingRecipe(), 4, seed=0)(inputs, labels)
    assert torch.equal(out, inputs)
    assert torch.equal(targets, torch.nn.functional.one_hot(labels, 4).float())


def test_shapes_and_label_mass_are_kept() -> None:
    inputs, labels = _batch()
    out, targets = BatchAugmenter(ALL_ON, 4, seed=0, shift_per_db=MFCC_SHIFT)(inputs, labels)
    assert out.shape == inputs.shape and out.dtype == inputs.dtype
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))
    # mixup mixes two of the batch's own labels: all mass sits on labels present in the batch
    assert bool((targets[:, labels.unique()].sum(dim=1) > 0.99).all())


def test_label_smoothing_by_hand() -> None:
    targets = BatchAugmenter(TrainingRecipe(label_smoothing=0.1), 4, seed=0).targets(torch.tensor([2]))
    torch.testing.assert_close(targets, torch.tensor([[0.025, 0.025, 0.925, 0.025]]))


def test_time_shift_moves_whole_frames_and_repeats_the_edge() -> None:
    inputs = torch.arange(2 * 10 * 3, dtype=torch.float32).reshape(2, 1, 10, 3)
    augmenter = BatchAugmenter(TrainingRecipe(time_shift_frames=3), 2, seed=1)
    shifted = augmenter.shift(inputs)
    for row in range(2):
        frames = shifted[row, 0]
        source = [int(torch.nonzero((inputs[row, 0] == frame).all(dim=1))[0]) for frame in frames]
        steps = torch.diff(torch.tensor(source))
        assert set(steps.tolist()) <= {0, 1}  # frames stay in order, vacated ones repeat an edge frame
        assert abs(source[5] - 5) <= 3


def test_masks_cover_at_most_their_width_and_fill_with_the_given_value() -> None:
    spans = mask_spans(64, 196, masks=2, max_width=20, generator=torch.Generator().manual_seed(0))
    assert int(spans.sum(dim=1).max()) <= 40
    inputs, labels = _batch()
    fill = torch.full((1, 1, 1, 39), 7.0)
    recipe = TrainingRecipe(time_masks=2, time_mask_frames=20)
    out, _ = BatchAugmenter(recipe, 4, seed=0, mask_fill=fill)(inputs, labels)
    changed = out != inputs
    assert bool((out[changed] == 7.0).all()) and changed.any()


def test_gain_shifts_each_clip_by_one_drawn_gain_within_the_range() -> None:
    inputs, labels = _batch()
    recipe = TrainingRecipe(gain_min_db=-10.0, gain_max_db=25.0)
    out, _ = BatchAugmenter(recipe, 4, seed=0, shift_per_db=MFCC_SHIFT)(inputs, labels)
    moved = out - inputs
    torch.testing.assert_close(moved[..., 1:], torch.zeros_like(moved[..., 1:]))  # MFCC: coefficient 0 only
    gains_db = moved[..., 0] / MFCC_SHIFT[0]  # (clips, 1, frames): one gain per clip, every frame
    torch.testing.assert_close(gains_db, gains_db[..., :1].expand_as(gains_db), rtol=0, atol=1e-4)
    assert gains_db.min() >= -10.0 and gains_db.max() <= 25.0
    assert len(set(gains_db[:, 0, 0].tolist())) == len(inputs)


def test_gain_without_the_features_shift_is_refused() -> None:
    try:
        BatchAugmenter(TrainingRecipe(gain_max_db=6.0), 4, seed=0)
    except ValueError as error:
        assert "gain" in str(error)
    else:
        raise AssertionError("gain augmentation without a shift per dB was accepted")
