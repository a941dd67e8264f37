"""The one interface every emotion model serves through: workers and commands know nothing else."""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from emostream.model.call_statistics import CallStatistics
from emostream.schemas.model_card import ModelCard


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one utterance."""

    label: str
    scores: dict[str, float]  # probability per label, in the card's label order
    arousal: float | None = None
    valence: float | None = None
    transcript: str | None = None


class EmotionModel(ABC):
    """A loaded, ready-to-run emotion model described by its card."""

    def __init__(self, card: ModelCard) -> None:
        self.card = card

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.card.labels)

    @property
    def uses_call_statistics(self) -> bool:
        """Whether `predict` measures each utterance against its call's running statistics."""
        return self.card.features.call_normalisation

    @abstractmethod
    def predict(self, waveforms: Sequence[np.ndarray], sample_rate_hz: int,
                calls: Sequence[CallStatistics] | None = None) -> list[Prediction]:
        """Classify utterances: each a mono float32 array in [-1, 1] at `sample_rate_hz`.

        `calls`: one running statistics object per utterance, the same object for the utterances of
        one call, in the call's order; a model that `uses_call_statistics` adds each utterance to it
        (model/call_statistics.py). None: every utterance is the first of its own call. Thread-safe for
        concurrent calls on different calls' statistics; runs on the CPU.
        """
