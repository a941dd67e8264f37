"""The PLB network served through the EmotionModel interface."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from emostream.model.base import EmotionModel, Prediction
from emostream.model.checkpoint import load_plb
from emostream.model.features import batch_windows


class PLBEmotionModel(EmotionModel):
    """Any utterance length: audio up to 4.535 s is zero-padded to one input window (as in training);
    longer audio is cut into overlapping windows whose class probabilities are averaged."""

    def __init__(self, folder: Path) -> None:
        network, card = load_plb(folder)
        # channels-last: pooling and the elementwise layers over the 64-channel maps run several times
        # faster on CPU in this layout (same results to 1e-10).
        self.network = network.to(memory_format=torch.channels_last)
        super().__init__(card)

    def predict(self, waveforms: Sequence[np.ndarray], sample_rate_hz: int) -> list[Prediction]:
        if not waveforms:
            return []
        windows, counts = batch_windows(waveforms, sample_rate_hz, self.card.features)
        with torch.inference_mode():
            inputs = torch.from_numpy(windows).unsqueeze(1).contiguous(memory_format=torch.channels_last)
            probabilities = torch.softmax(self.network(inputs) / self.card.score_temperature, dim=1).numpy()
        predictions = []
        start = 0
        for count in counts:
            mean = probabilities[start : start + count].mean(axis=0)
            start += count
            scores = {label: float(p) for label, p in zip(self.labels, mean, strict=True)}
            predictions.append(Prediction(label=self.labels[int(mean.argmax())], scores=scores))
        return predictions
