"""The PLB network served through the EmotionModel interface."""

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from emostream.model.base import EmotionModel, Prediction
from emostream.model.call_statistics import CallPrior, CallStatistics, standardise_utterances
from emostream.model.checkpoint import load_plb
from emostream.model.fast_features import MfccTransform
from emostream.model.features import batch_windows
from emostream.model.onnx_network import OnnxNetwork

WARM_UP_RATE_HZ = 16_000
log = logging.getLogger(__name__)


class PLBEmotionModel(EmotionModel):
    """Any utterance length: audio up to 4.535 s is zero-padded to one input window (as in training);
    longer audio is cut into overlapping windows whose class probabilities are averaged.

    `fast=True` (served): MFCC as torch ops (model/fast_features.py) and the network in ONNX Runtime
    (model/onnx_network.py), built and warmed here; held to the reference by
    tests/test_fast_inference.py. `fast=False`: the reference, librosa features and the eager network.
    `threads` is ONNX Runtime's intra-op thread count (the fast path's only threaded part).
    """

    def __init__(self, folder: Path, fast: bool = True, threads: int = 1) -> None:
        started = time.perf_counter()
        network, card = load_plb(folder)
        super().__init__(card)
        self.fast = fast
        # channels-last: pooling and the elementwise layers over the 64-channel maps run several times
        # faster on CPU in this layout (same results to 1e-10).
        self.network = network.to(memory_format=torch.channels_last)
        features = card.features
        self.call_prior = CallPrior(np.array(features.call_prior_mean), np.array(features.call_prior_std),
                                    features.call_prior_frames) if features.call_normalisation else None
        self.window_features: MfccTransform | None = None
        self.onnx_network: OnnxNetwork | None = None
        if fast:
            self.window_features = MfccTransform(card.features)
            try:
                self.onnx_network = OnnxNetwork(network, threads=threads)
            except Exception as error:  # noqa: BLE001 - serve with the eager network rather than not at all
                log.warning("%s: ONNX export failed (%s); serving the eager network (~3x slower)",
                            folder, error)
            # Warm-up at the pipeline's 16 kHz: the first resampling call also loads librosa's lazy
            # modules (~1 s), which would otherwise land on the first utterance.
            self.predict([np.zeros(WARM_UP_RATE_HZ, np.float32)], WARM_UP_RATE_HZ)
        self.load_s = time.perf_counter() - started  # start-up: load, export, session, warm-up

    def logits(self, windows: np.ndarray) -> np.ndarray:
        """The network on (windows, frames, coefficients) float32 features -> (windows, classes)."""
        if self.onnx_network is not None:
            return self.onnx_network(windows[:, None])
        with torch.inference_mode():
            inputs = torch.from_numpy(windows).unsqueeze(1).contiguous(memory_format=torch.channels_last)
            return self.network(inputs).numpy()

    def predict(self, waveforms: Sequence[np.ndarray], sample_rate_hz: int,
                calls: Sequence[CallStatistics] | None = None) -> list[Prediction]:
        if not waveforms:
            return []
        windows, counts = batch_windows(waveforms, sample_rate_hz, self.card.features, self.window_features)
        if self.card.features.call_normalisation:
            calls = calls if calls is not None else [CallStatistics() for _ in waveforms]
            windows = standardise_utterances(windows, counts, calls, self.call_prior)
        with torch.inference_mode():
            logits = torch.from_numpy(self.logits(windows))
            probabilities = torch.softmax(logits / self.card.score_temperature, dim=1).numpy()
        predictions = []
        start = 0
        for count in counts:
            mean = probabilities[start : start + count].mean(axis=0)
            start += count
            scores = {label: float(p) for label, p in zip(self.labels, mean, strict=True)}
            predictions.append(Prediction(label=self.labels[int(mean.argmax())], scores=scores))
        return predictions
