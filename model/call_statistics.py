"""Per-call standardisation of the MFCC input: each coefficient measured against the caller's own voice.

A speaker's average MFCC (their timbre, their microphone, the line's gain) says nothing about emotion;
how an utterance departs from that speaker's average does. In training each speaker's clips are
standardised with that speaker's statistics (`standardise_per_speaker`); served, a call's statistics
(`CallStatistics`) accumulate over its utterances, the current one included. Early in a call they
rest on few frames, so they are blended with the training speakers' pooled statistics (`CallPrior`)
counted as `prior_frames` frames, moved to the call's own level first: the prior shapes the spread and
the spectrum, never the loudness, so a call at any gain gets the same input.

Statistics are taken over speech frames only: a frame whose MFCC 0 is above its clip's floor (the
-80 dB floor of `power_to_db` that padding and digital silence sit at). Every frame, padding
included, is standardised, so padding stays far below speech. Measured on speaker folds in
model/PLB.md ("Per-call standardisation").
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

GAIN_REFUSED = ("call normalisation removes a call's gain, so gain augmentation would only add noise: train "
                "with gain_min_db = gain_max_db = 0")
FLOOR_MARGIN = 1e-3  # a frame within this of its clip's lowest MFCC 0 is at the floor (no speech)
MIN_STD = 1e-3


def speech_frames(features: np.ndarray) -> np.ndarray:
    """(..., frames, coefficients) -> (..., frames) bool: frames above their clip's floor."""
    energy = features[..., 0]
    return energy > energy.min(axis=-1, keepdims=True) + FLOOR_MARGIN


@dataclass(frozen=True)
class CallPrior:
    """Pooled statistics of the training speakers' speech frames, and how many frames they count as."""

    mean: np.ndarray  # (coefficients,)
    std: np.ndarray
    frames: float

    @classmethod
    def of(cls, clips: np.ndarray, frames: float) -> "CallPrior":
        """From raw training features (clips, frames, coefficients)."""
        speech = np.asarray(clips, dtype=np.float64)[speech_frames(clips)]
        return cls(speech.mean(axis=0), speech.std(axis=0).clip(MIN_STD), frames)


@dataclass
class CallStatistics:
    """Running sums over a call's speech frames: what `standardise` measures the call's input against."""

    frames: float = 0.0
    total: np.ndarray = field(default_factory=lambda: np.zeros(0))
    squares: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def copy(self) -> "CallStatistics":
        return CallStatistics(self.frames, self.total.copy(), self.squares.copy())

    def add(self, windows: np.ndarray) -> None:
        """Count the speech frames of one utterance's (windows, frames, coefficients) features."""
        speech = np.asarray(windows, dtype=np.float64)[speech_frames(windows)]
        if not len(speech):
            return
        if not self.frames:
            self.total, self.squares = np.zeros(speech.shape[1]), np.zeros(speech.shape[1])
        self.frames += len(speech)
        self.total += speech.sum(axis=0)
        self.squares += np.square(speech).sum(axis=0)

    def mean_std(self, prior: CallPrior | None) -> tuple[np.ndarray, np.ndarray]:
        """The call's mean and standard deviation per coefficient, blended with `prior` (if any)."""
        if prior is None or prior.frames <= 0:
            if self.frames < 2:
                raise ValueError("a call's statistics need 2 or more speech frames, or a prior")
            mean = self.total / self.frames
            return mean, np.sqrt(np.maximum(self.squares / self.frames - mean**2, MIN_STD**2))
        prior_mean = prior.mean.copy()
        if self.frames:
            prior_mean[0] = self.total[0] / self.frames  # the call's level, never the prior's
        count = self.frames + prior.frames
        total = (self.total if self.frames else 0.0) + prior.frames * prior_mean
        squares = (self.squares if self.frames else 0.0) + prior.frames * (prior.std**2 + prior_mean**2)
        mean = total / count
        return mean, np.sqrt(np.maximum(squares / count - mean**2, MIN_STD**2))

    def standardise(self, windows: np.ndarray, prior: CallPrior | None) -> np.ndarray:
        mean, std = self.mean_std(prior)
        return ((windows - mean) / std).astype(np.float32)


def standardise_utterances(windows: np.ndarray, counts: Sequence[int], calls: Sequence[CallStatistics],
                           prior: CallPrior | None) -> np.ndarray:
    """Stacked windows of utterances (`counts` windows each, in call order) standardised with their
    calls' statistics, each call first counting the utterance itself. Same shape, float32."""
    if len(calls) != len(counts):
        raise ValueError(f"{len(counts)} utterances but statistics of {len(calls)} calls")
    result = np.empty_like(windows, dtype=np.float32)
    start = 0
    for count, call in zip(counts, calls, strict=True):
        utterance = windows[start : start + count]
        call.add(utterance)
        result[start : start + count] = call.standardise(utterance, prior)
        start += count
    return result


def per_speaker_statistics(bank: np.ndarray, speakers: Sequence[str]
                           ) -> Iterator[tuple[str, np.ndarray, int, CallStatistics]]:
    """(speaker, their rows, variant, statistics of those rows' speech frames) for every speaker of a
    (clips, variants, frames, coefficients) bank, each waveform variant apart."""
    if len(speakers) != len(bank):
        raise ValueError(f"{len(bank)} clips but {len(speakers)} speakers")
    names = np.array(speakers)
    for speaker in dict.fromkeys(speakers):
        rows = np.flatnonzero(names == speaker)
        for variant in range(bank.shape[1]):
            statistics = CallStatistics()
            statistics.add(bank[rows, variant])
            yield speaker, rows, variant, statistics


def standardise_per_speaker(features: np.ndarray, speakers: Sequence[str]) -> np.ndarray:
    """Training features standardised with each speaker's own statistics, each waveform variant apart
    (a call's own channel gives its own statistics: telephone audio is measured against telephone audio).

    features: (clips, frames, coefficients) or (clips, variants, frames, coefficients).
    """
    bank = features if features.ndim == 4 else features[:, None]
    result = np.empty_like(bank, dtype=np.float32)
    for speaker, rows, variant, statistics in per_speaker_statistics(bank, speakers):
        try:
            result[rows, variant] = statistics.standardise(bank[rows, variant], None)
        except ValueError as error:
            raise ValueError(f"speaker {speaker!r}, variant {variant}: {error}") from None
    return result if features.ndim == 4 else result[:, 0]


def _speech_sums(clips: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per clip of (clips, frames, coefficients): speech frames, their sum and their sum of squares."""
    speech = speech_frames(clips)[..., None]
    values = np.asarray(clips, dtype=np.float64)
    return speech[..., 0].sum(axis=1).astype(np.float64), (values * speech).sum(axis=1), \
        (np.square(values) * speech).sum(axis=1)


def standardise_partial_calls(bank: np.ndarray, speakers: Sequence[str], prior: CallPrior,
                              rng: np.random.Generator) -> np.ndarray:
    """A feature bank standardised as a call's utterances are served, early ones included.

    The first variant (the clips as recorded, what evaluation scores) is standardised with all of its
    speaker's clips, as `standardise_per_speaker` does. Every other (clip, variant) is standardised as
    if it were the k-th utterance of a call: with the statistics of itself and k - 1 of its speaker's
    other clips of that variant, drawn at random, blended with `prior` exactly as serving blends. k is
    drawn log-uniformly from 1 to the speaker's clip count, so a call's first few utterances, which
    served statistics rest on least, get as much weight as the rest of the call together.

    bank: (clips, variants, frames, coefficients) -> float32 of the same shape.
    """
    if bank.ndim != 4 or bank.shape[1] < 2:
        raise ValueError("partial-call statistics need a feature bank with two or more waveform variants "
                         f"(clips, variants, frames, coefficients); got shape {bank.shape}")
    result = np.empty(bank.shape, dtype=np.float32)
    result[:, :1] = standardise_per_speaker(bank[:, :1], speakers)
    names = np.array(speakers)
    for variant in range(1, bank.shape[1]):
        frames, total, squares = _speech_sums(bank[:, variant])
        for speaker in dict.fromkeys(speakers):
            rows = np.flatnonzero(names == speaker)
            for row in rows:
                count = min(len(rows), int(np.exp(rng.uniform(0.0, np.log(len(rows) + 1)))))
                others = rng.choice(rows[rows != row], size=max(0, count - 1), replace=False)
                chosen = np.append(others, row)
                call = CallStatistics(float(frames[chosen].sum()), total[chosen].sum(axis=0),
                                      squares[chosen].sum(axis=0))
                result[row, variant] = call.standardise(bank[row, variant], prior)
    return result
