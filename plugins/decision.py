"""Decision helpers: turn a noisy per-segment label into one a dialogue manager can act on.

Applied per plugin and per stream, in this order:
1. smoothing: the scores of the last `smoothing_window_segments` segments are averaged;
2. confidence threshold: if the best averaged score is below `confidence_threshold`, the
   candidate label is `uncertain`;
3. hysteresis: the reported label changes only after the same new candidate wins
   `hysteresis_segments` segments in a row, so one odd segment never flips the conversation;
4. `only_on_change`: optionally, deliver only when the reported label changes.

The event handed on keeps its raw `scores`; only `label` is the decided one. Replays of a segment
already seen (at-least-once delivery) get the label decided the first time and do not move the
state.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from emostream.schemas.event import EmotionEvent
from pydantic import BaseModel, ConfigDict, Field

UNCERTAIN_LABEL = "uncertain"
MAX_TRACKED_STREAMS = 10_000  # least recently seen streams are forgotten beyond this
REMEMBERED_DECISIONS_PER_STREAM = 256  # decided labels kept for answering replays


class DecisionOptions(BaseModel):
    """Optional decision helpers of one plugin; the defaults leave events unchanged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    confidence_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="best (smoothed) score below this -> label `uncertain`"
    )
    smoothing_window_segments: int = Field(1, ge=1, description="average scores over this many recent segments")
    hysteresis_segments: int = Field(
        1, ge=1, description="a new label must win this many segments in a row before it is reported"
    )
    only_on_change: bool = Field(False, description="deliver an event only when the reported label changes")

    @property
    def is_identity(self) -> bool:
        return (
            self.confidence_threshold is None
            and self.smoothing_window_segments == 1
            and self.hysteresis_segments == 1
            and not self.only_on_change
        )


@dataclass
class _StreamDecision:
    window: deque[dict[str, float]]
    reported_label: str | None = None
    candidate_label: str | None = None
    candidate_run_segments: int = 0
    last_segment_index: int = -1
    decided: OrderedDict[int, str | None] = field(default_factory=OrderedDict)  # None: suppressed


def average_scores(window: deque[dict[str, float]] | list[dict[str, float]]) -> dict[str, float]:
    """Mean score per label over the window (labels missing from a segment count as 0)."""
    labels = {label for scores in window for label in scores}
    count = len(window)
    return {label: sum(scores.get(label, 0.0) for scores in window) / count for label in sorted(labels)}


TIE_TOLERANCE = 1e-9


def best_label(scores: dict[str, float], confidence_threshold: float | None, *, prefer: str | None = None) -> str:
    """The top label, or `uncertain` when its score is below the threshold. On a tie the `prefer`
    label (the one reported now) wins, so a tie never flips the decision."""
    label, score = max(scores.items(), key=lambda item: item[1])
    if prefer is not None and prefer in scores and scores[prefer] >= score - TIE_TOLERANCE:
        label = prefer
    if confidence_threshold is not None and score < confidence_threshold:
        return UNCERTAIN_LABEL
    return label


class DecisionState:
    """Per-stream state of the decision helpers of one plugin."""

    def __init__(self, options: DecisionOptions) -> None:
        self.options = options
        self._streams: OrderedDict[str, _StreamDecision] = OrderedDict()

    def apply(self, event: EmotionEvent) -> EmotionEvent | None:
        """The event with its decided label, or None when `only_on_change` suppresses it."""
        if self.options.is_identity:
            return event
        state = self._stream(event.stream_id)
        if event.segment_index <= state.last_segment_index:
            if event.segment_index in state.decided:  # a replay: same answer as the first time
                label = state.decided[event.segment_index]
                return None if label is None else event.model_copy(update={"label": label})
            # Older than what we remember: decide it alone, without moving the state.
            label = best_label(event.scores, self.options.confidence_threshold)
            return event.model_copy(update={"label": label})

        state.last_segment_index = event.segment_index
        state.window.append(dict(event.scores))
        candidate = best_label(
            average_scores(state.window), self.options.confidence_threshold, prefer=state.reported_label
        )
        if candidate == state.candidate_label:
            state.candidate_run_segments += 1
        else:
            state.candidate_label, state.candidate_run_segments = candidate, 1

        previous = state.reported_label
        if previous is None or state.candidate_run_segments >= self.options.hysteresis_segments:
            state.reported_label = candidate
        reported = state.reported_label
        assert reported is not None
        delivered: str | None = reported
        if self.options.only_on_change and reported == previous:
            delivered = None
        state.decided[event.segment_index] = delivered
        while len(state.decided) > REMEMBERED_DECISIONS_PER_STREAM:
            state.decided.popitem(last=False)
        return None if delivered is None else event.model_copy(update={"label": delivered})

    def reported_label(self, stream_id: str) -> str | None:
        state = self._streams.get(stream_id)
        return None if state is None else state.reported_label

    def forget(self, stream_id: str) -> None:
        self._streams.pop(stream_id, None)

    def _stream(self, stream_id: str) -> _StreamDecision:
        state = self._streams.get(stream_id)
        if state is None:
            state = _StreamDecision(window=deque(maxlen=self.options.smoothing_window_segments))
            self._streams[stream_id] = state
            while len(self._streams) > MAX_TRACKED_STREAMS:
                self._streams.popitem(last=False)
        else:
            self._streams.move_to_end(stream_id)
        return state
