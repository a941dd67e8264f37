"""The ASR-multitask transformer (and its CNN-BLSTM-SA baseline) served through the EmotionModel
interface: whole utterances of any length, log-mel features (model/logmel.py), emotion scores from
the emotion embedding's output z_e and, for a model fine-tuned with CTC, the greedy transcript."""

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from emostream.model.asr_checkpoint import load_emotion_network
from emostream.model.asr_training import predict_utterances
from emostream.model.base import EmotionModel, Prediction
from emostream.model.call_statistics import CallStatistics
from emostream.model.logmel import logmel_frames

SERVING_DEVICE = torch.device("cpu")


class AsrMultitaskEmotionModel(EmotionModel):
    """Utterances are batched padded to the longest (the transformer masks the padding); the
    transcript is None where the checkpoint does not transcribe (fine-tuned without CTC, baseline)."""

    def __init__(self, folder: Path) -> None:
        started = time.perf_counter()
        self.network, self.tokenizer, card = load_emotion_network(folder)
        super().__init__(card)
        if card.features.call_normalisation:
            raise ValueError(f"{folder}: the ASR-multitask model has no per-call standardisation "
                             "(its log-mel is mean-normalised per utterance); card features.call_normalisation "
                             "must be false")
        self.load_s = time.perf_counter() - started

    @property
    def transcribes(self) -> bool:
        return self.tokenizer is not None

    def predict(self, waveforms: Sequence[np.ndarray], sample_rate_hz: int,
                calls: Sequence[CallStatistics] | None = None) -> list[Prediction]:
        if not waveforms:
            return []
        features = [logmel_frames(audio, sample_rate_hz, self.card.features) for audio in waveforms]
        logits, pieces = predict_utterances(self.network, features, SERVING_DEVICE)
        with torch.inference_mode():
            probabilities = torch.softmax(torch.from_numpy(logits) / self.card.score_temperature, dim=1).numpy()
        predictions = []
        for row, utterance_pieces in zip(probabilities, pieces, strict=True):
            scores = {label: float(p) for label, p in zip(self.labels, row, strict=True)}
            transcript = self.tokenizer.decode(utterance_pieces) if self.tokenizer is not None else None
            predictions.append(Prediction(label=self.labels[int(row.argmax())], scores=scores, transcript=transcript))
        return predictions
