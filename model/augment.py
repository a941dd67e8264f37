"""Batch augmentation of model inputs in the training loop: random gain, random time offsets,
SpecAugment masks, mixup, label smoothing.

Every random draw comes from one seeded generator whose state the training checkpoint keeps, so an
augmented run resumes exactly. Inputs are (B, 1, frames, coefficients); targets leave as (B, K)
distributions, so the compiled step sees one shape whatever is switched on.
"""

import torch
from emostream.model.recipes import TrainingRecipe
from scipy.special import betaincinv


def mask_spans(batch: int, length: int, masks: int, max_width: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, length) bool: `masks` spans per row, each of 0..max_width positions at a random start."""
    positions = torch.arange(length)
    masked = torch.zeros(batch, length, dtype=torch.bool)
    for _ in range(masks):
        widths = torch.randint(0, max_width + 1, (batch, 1), generator=generator)
        starts = (torch.rand(batch, 1, generator=generator) * (length - widths + 1)).long()
        masked |= (positions >= starts) & (positions < starts + widths)
    return masked


class BatchAugmenter:
    """What the recipe asks for, applied to one batch; the identity (one-hot targets) when nothing is."""

    def __init__(self, recipe: TrainingRecipe, num_classes: int, seed: int,
                 mask_fill: torch.Tensor | None = None, shift_per_db: torch.Tensor | None = None) -> None:
        if recipe.gain_augmentation and shift_per_db is None:
            raise ValueError("recipe asks for gain augmentation but the features' shift per dB is unknown "
                             "(a feature table without settings)")
        self.recipe = recipe
        self.num_classes = num_classes
        self.generator = torch.Generator().manual_seed(seed)
        self.mask_fill = mask_fill  # value masked cells take (broadcast to the input); zeros if None
        self.shift_per_db = shift_per_db  # (coefficients,): features.input_shift_per_db

    def gain(self, inputs: torch.Tensor) -> torch.Tensor:
        """Each clip as if its audio were gain_min_db..gain_max_db louder: a constant shift of its input."""
        if not self.recipe.gain_augmentation:
            return inputs
        low, high = self.recipe.gain_min_db, self.recipe.gain_max_db
        assert self.shift_per_db is not None
        gains_db = low + (high - low) * torch.rand(len(inputs), 1, 1, 1, generator=self.generator)
        return inputs + (gains_db * self.shift_per_db).to(inputs.device)

    def targets(self, label_ids: torch.Tensor) -> torch.Tensor:
        smoothing = self.recipe.label_smoothing
        one_hot = torch.nn.functional.one_hot(label_ids, self.num_classes).float()
        return one_hot * (1.0 - smoothing) + smoothing / self.num_classes

    def shift(self, inputs: torch.Tensor) -> torch.Tensor:
        """Move each clip by -S..S frames inside its window; vacated frames repeat the clip's edge frame
        (its padding: silence, for clips shorter than the window)."""
        limit = self.recipe.time_shift_frames
        if limit <= 0:
            return inputs
        frames = inputs.shape[2]
        offsets = torch.randint(-limit, limit + 1, (len(inputs), 1), generator=self.generator)
        source = (torch.arange(frames)[None, :] - offsets).clamp(0, frames - 1).to(inputs.device)
        return torch.take_along_dim(inputs, source[:, None, :, None], dim=2)

    def masks(self, inputs: torch.Tensor) -> torch.Tensor:
        r = self.recipe
        if not (r.time_masks and r.time_mask_frames) and not (r.coefficient_masks and r.coefficient_mask_width):
            return inputs
        batch, _, frames, coefficients = inputs.shape
        keep = torch.ones(batch, 1, frames, coefficients, dtype=torch.bool)
        if r.time_masks and r.time_mask_frames:
            keep &= ~mask_spans(batch, frames, r.time_masks, r.time_mask_frames, self.generator)[:, None, :, None]
        if r.coefficient_masks and r.coefficient_mask_width:
            keep &= ~mask_spans(batch, coefficients, r.coefficient_masks, r.coefficient_mask_width,
                                self.generator)[:, None, None, :]
        fill = torch.zeros((), dtype=inputs.dtype) if self.mask_fill is None else self.mask_fill
        return torch.where(keep.to(inputs.device), inputs, fill.to(inputs.device))

    def mixup(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.recipe.mixup_alpha
        if alpha <= 0:
            return inputs, targets
        uniform = float(torch.rand((), generator=self.generator))
        weight = float(betaincinv(alpha, alpha, uniform))  # an exact Beta(alpha, alpha) draw
        partner = torch.randperm(len(inputs), generator=self.generator).to(inputs.device)
        return (weight * inputs + (1 - weight) * inputs[partner],
                weight * targets + (1 - weight) * targets[partner])

    def __call__(self, inputs: torch.Tensor, label_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mixup(self.masks(self.shift(self.gain(inputs))), self.targets(label_ids))
