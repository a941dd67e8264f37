"""Offline analysis of a recording: webrtcvad end-pointing, then one prediction per utterance."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from emostream.model.audio_io import AudioInputError, check_waveform, read_audio
from emostream.model.base import EmotionModel
from emostream.model.call_statistics import CallStatistics
from emostream.model.features import resample
from emostream.model.vad import VAD_SAMPLE_RATE_HZ, Endpointer, EndpointerParams


@dataclass(frozen=True)
class UtteranceResult:
    start_s: float
    end_s: float
    label: str
    scores: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        return {"start_s": round(self.start_s, 3), "end_s": round(self.end_s, 3), "label": self.label,
                "scores": {label: round(score, 4) for label, score in self.scores.items()}}


def to_s16le(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def utterances(audio_16k: np.ndarray, params: EndpointerParams) -> list[tuple[float, float, np.ndarray]]:
    """(start_s, end_s, audio) of each utterance found by the end-pointer in 16 kHz audio."""
    endpointer = Endpointer(params)
    segments = endpointer.push(to_s16le(audio_16k)) + endpointer.flush()
    return [
        (segment.start_ms / 1000, segment.end_ms / 1000,
         np.frombuffer(segment.pcm_s16le, dtype="<i2").astype(np.float32) / 32768.0)
        for segment in segments
    ]


def analyze_waveform(audio: np.ndarray, sample_rate_hz: int, model: EmotionModel, params: EndpointerParams,
                     use_vad: bool = True, source: str = "audio") -> list[UtteranceResult]:
    audio = check_waveform(audio, sample_rate_hz, source)
    if use_vad:
        found = utterances(resample(audio, sample_rate_hz, VAD_SAMPLE_RATE_HZ), params)
        pieces = [(start, end, piece) for start, end, piece in found]
        rate = VAD_SAMPLE_RATE_HZ
    else:
        pieces = [(0.0, len(audio) / sample_rate_hz, audio)]
        rate = sample_rate_hz
    if not pieces:
        return []
    call = CallStatistics()  # the recording is one call: each utterance is measured against those before it
    predictions = model.predict([piece for _, _, piece in pieces], rate, [call] * len(pieces))
    return [UtteranceResult(start, end, p.label, p.scores) for (start, end, _), p in zip(pieces, predictions, strict=True)]


def analyze_file(path: Path, model: EmotionModel, params: EndpointerParams, use_vad: bool = True,
                 allow_stereo: bool = False) -> list[UtteranceResult]:
    """Raises AudioInputError naming the file for unreadable, unsupported or unusable audio."""
    audio, sample_rate_hz = read_audio(path, allow_stereo=allow_stereo)
    return analyze_waveform(audio, sample_rate_hz, model, params, use_vad, source=str(path))


def plot_timeline(results: list[UtteranceResult], labels: tuple[str, ...], path: Path, title: str) -> None:
    """One row per label; each utterance a bar from start to end, shaded by its score for that label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 0.5 + 0.4 * len(labels)))
    colours = plt.get_cmap("tab10")
    for row, label in enumerate(labels):
        for result in results:
            alpha = max(0.05, result.scores.get(label, 0.0))
            axes.barh(row, result.end_s - result.start_s, left=result.start_s, color=colours(row % 10), alpha=alpha,
                      edgecolor="black" if result.label == label else "none")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("time (s)")
    axes.set_title(f"{title}: emotion per utterance (outlined = predicted, shade = score)")
    axes.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


__all__ = ["AudioInputError", "UtteranceResult", "analyze_file", "analyze_waveform", "plot_timeline", "utterances"]
