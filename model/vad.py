"""Voice-activity end-pointing with webrtcvad: a streaming state machine over 16 kHz s16le audio.

Used by the streaming VAD stage (one `Endpointer` per stream) and by the offline `analyze` command.
States: QUIET -> (enough speech in the onset window) -> SPEAKING -> (hangover of non-speech) -> QUIET.

Boundaries (for crash recovery of the streaming stage): webrtcvad adapts its noise model frame by
frame, so its decisions depend on all earlier audio. At a *boundary* the end-pointer starts a fresh
webrtcvad and empties its windows, so its whole state is (stream position, speaking or not, segments
emitted so far): `boundary` describes the latest one, and `restart_at(boundary)` rebuilds exactly
that state. Feeding the audio after the boundary then reproduces exactly the segments of the first
run. Boundaries are placed at every segment close, at every split of a long segment, at `flush()`,
and after `quiet_boundary_ms` of audio in QUIET with no voiced frame in the onset window.
"""

from collections import deque
from dataclasses import asdict, dataclass, field, fields
from enum import Enum

import webrtcvad
from emostream.schemas.settings import VadSettings

VAD_SAMPLE_RATE_HZ = 16_000
BYTES_PER_SAMPLE = 2  # s16le
ONSET_SPEECH_RATIO = 0.75  # share of voiced frames in the onset window that starts a segment


_VAD = VadSettings()  # the settings model is the source of every default and check below


@dataclass(frozen=True)
class EndpointerParams:
    """End-pointing parameters; every duration in milliseconds of audio (stream time). The fields are
    `schemas.settings.VadSettings`'s of the same names, with its defaults and validated by it."""

    aggressiveness: int = _VAD.aggressiveness  # webrtcvad mode 0-3: higher rejects more non-speech
    frame_ms: int = _VAD.frame_ms  # webrtcvad accepts 10, 20 or 30
    onset_ms: int = _VAD.onset_ms  # a segment starts when ONSET_SPEECH_RATIO of this window is voiced
    hangover_ms: int = _VAD.hangover_ms  # a segment ends after this much non-speech
    padding_ms: int = _VAD.padding_ms  # non-speech kept before the onset and after the last voiced frame
    min_segment_ms: int = _VAD.min_segment_ms  # shorter segments are dropped
    max_segment_ms: int = _VAD.max_segment_ms  # longer speech is cut into segments of at most this length
    quiet_boundary_ms: int = _VAD.quiet_boundary_ms  # in QUIET, a boundary after this much audio; 0: never

    def __post_init__(self) -> None:
        VadSettings.model_validate(asdict(self))  # raises ValueError naming the field and the problem
        if self.max_segment_ms < self.min_segment_ms:
            raise ValueError(f"max_segment_ms {self.max_segment_ms} is below min_segment_ms {self.min_segment_ms}")

    @classmethod
    def from_settings(cls, vad: VadSettings) -> "EndpointerParams":
        return cls(**vad.model_dump(include={f.name for f in fields(cls)}))

    def frames(self, duration_ms: int) -> int:
        """Whole frames covering `duration_ms` (at least 1 for a positive duration)."""
        return max(1, -(-duration_ms // self.frame_ms)) if duration_ms > 0 else 0


@dataclass(frozen=True)
class SpeechSegment:
    """An utterance found by the end-pointer: 16 kHz s16le samples and its place in stream time."""

    start_sample: int  # stream time, samples at VAD_SAMPLE_RATE_HZ
    pcm_s16le: bytes
    index: int = 0  # 0, 1, 2, ... segments emitted by this end-pointer (continues across restart_at)

    @property
    def end_sample(self) -> int:
        return self.start_sample + len(self.pcm_s16le) // BYTES_PER_SAMPLE

    @property
    def start_ms(self) -> float:
        return 1000.0 * self.start_sample / VAD_SAMPLE_RATE_HZ

    @property
    def end_ms(self) -> float:
        return 1000.0 * self.end_sample / VAD_SAMPLE_RATE_HZ

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms


@dataclass(frozen=True)
class Boundary:
    """A point where the end-pointer's state is fully described by these fields (see module doc)."""

    sample: int = 0  # stream time, samples at VAD_SAMPLE_RATE_HZ
    speaking: bool = False  # inside a segment (a split of long speech) or not
    segments_before: int = 0  # segments emitted before it: the index of the next segment


class _State(Enum):
    QUIET = "quiet"
    SPEAKING = "speaking"


@dataclass
class Endpointer:
    """Feeds arbitrary-length 16 kHz s16le audio; returns segments as they close.

    `push()` may be called with chunks of any size; partial frames are kept for the next call.
    `flush()` closes an open segment (end of stream). `samples_seen` is the stream time reached.
    `boundary` is the latest boundary; `restart_at(boundary)` resumes from one (crash recovery).
    """

    params: EndpointerParams = field(default_factory=EndpointerParams)

    def __post_init__(self) -> None:
        self._vad = webrtcvad.Vad(self.params.aggressiveness)
        self._frame_bytes = VAD_SAMPLE_RATE_HZ * self.params.frame_ms // 1000 * BYTES_PER_SAMPLE
        self._onset_frames = self.params.frames(self.params.onset_ms) or 1
        self._hangover_frames = self.params.frames(self.params.hangover_ms) or 1
        self._padding_frames = self.params.frames(self.params.padding_ms)
        self._max_frames = max(1, self.params.max_segment_ms // self.params.frame_ms)
        self._frame_samples = self._frame_bytes // BYTES_PER_SAMPLE
        self._quiet_boundary_frames = self.params.frames(self.params.quiet_boundary_ms)
        self.reset_states()

    def reset_states(self) -> None:
        self.restart_at(Boundary())

    def restart_at(self, boundary: Boundary) -> None:
        """Rebuild the state the end-pointer had at `boundary`; feed the audio from boundary.sample on."""
        self._vad = webrtcvad.Vad(self.params.aggressiveness)
        self._state = _State.SPEAKING if boundary.speaking else _State.QUIET
        self._origin_sample = boundary.sample  # stream time of frame 0 of this run
        self._emitted = boundary.segments_before
        self._pending = b""
        self._next_frame = 0  # index of the next whole frame, counted from _origin_sample
        self._onset_voiced: deque[bool] = deque(maxlen=self._onset_frames)
        self._preroll: deque[bytes] = deque(maxlen=self._onset_frames + self._padding_frames)
        self._segment_frames: list[bytes] = []
        self._segment_first_frame = 0
        self._silence_run = 0
        self._boundary = boundary
        self._boundary_frame = 0

    @property
    def boundary(self) -> Boundary:
        return self._boundary

    @property
    def segments_emitted(self) -> int:
        return self._emitted

    @property
    def samples_seen(self) -> int:
        return self._origin_sample + self._next_frame * self._frame_samples + len(self._pending) // BYTES_PER_SAMPLE

    @property
    def in_speech(self) -> bool:
        return self._state is _State.SPEAKING

    def push(self, pcm_s16le: bytes) -> list[SpeechSegment]:
        if len(pcm_s16le) % BYTES_PER_SAMPLE:
            raise ValueError(f"s16le audio must have an even number of bytes, got {len(pcm_s16le)}")
        buffer = self._pending + pcm_s16le
        whole = len(buffer) - len(buffer) % self._frame_bytes
        closed: list[SpeechSegment] = []
        for offset in range(0, whole, self._frame_bytes):
            segment = self._on_frame(buffer[offset : offset + self._frame_bytes])
            if segment is not None:
                closed.append(segment)
        self._pending = buffer[whole:]
        return closed

    def flush(self) -> list[SpeechSegment]:
        """Close the open segment, if any (end of stream); the end-pointer is then QUIET."""
        closed: list[SpeechSegment] = []
        if self._state is _State.SPEAKING:
            segment = self._close(trailing_silence_frames=self._silence_run)
            if segment is not None:
                closed.append(segment)
        self._onset_voiced.clear()
        self._preroll.clear()
        self._mark_boundary()
        return closed

    def _mark_boundary(self) -> None:
        """Fresh webrtcvad and empty windows from the next frame on: a point replay can restart from."""
        self._vad = webrtcvad.Vad(self.params.aggressiveness)
        self._boundary_frame = self._next_frame
        self._boundary = Boundary(
            sample=self._origin_sample + self._next_frame * self._frame_samples,
            speaking=self._state is _State.SPEAKING,
            segments_before=self._emitted,
        )

    def _on_frame(self, frame: bytes) -> SpeechSegment | None:
        index = self._next_frame
        self._next_frame += 1
        is_speech = self._vad.is_speech(frame, VAD_SAMPLE_RATE_HZ)
        if self._state is _State.QUIET:
            self._onset_voiced.append(is_speech)
            self._preroll.append(frame)
            if sum(self._onset_voiced) >= ONSET_SPEECH_RATIO * self._onset_frames:
                self._state = _State.SPEAKING
                self._segment_frames = list(self._preroll)
                self._segment_first_frame = index - len(self._preroll) + 1
                self._silence_run = 0
                self._onset_voiced.clear()
                self._preroll.clear()
            elif (
                self._quiet_boundary_frames
                and self._next_frame - self._boundary_frame >= self._quiet_boundary_frames
                and not any(self._onset_voiced)
            ):
                self._onset_voiced.clear()
                self._preroll.clear()
                self._mark_boundary()
            return None
        self._segment_frames.append(frame)
        self._silence_run = 0 if is_speech else self._silence_run + 1
        if self._silence_run >= self._hangover_frames:
            segment = self._close(trailing_silence_frames=self._silence_run)
            self._mark_boundary()
            return segment
        if len(self._segment_frames) >= self._max_frames:
            segment = self._emit(self._segment_frames)
            self._segment_frames = []
            self._segment_first_frame = index + 1
            self._silence_run = 0
            self._mark_boundary()
            return segment
        return None

    def _close(self, trailing_silence_frames: int) -> SpeechSegment | None:
        drop = max(0, trailing_silence_frames - self._padding_frames)
        frames = self._segment_frames[: len(self._segment_frames) - drop] if drop else self._segment_frames
        segment = self._emit(frames)
        self._state = _State.QUIET
        self._segment_frames = []
        self._silence_run = 0
        return segment

    def _emit(self, frames: list[bytes]) -> SpeechSegment | None:
        segment = SpeechSegment(
            start_sample=self._origin_sample + self._segment_first_frame * self._frame_samples,
            pcm_s16le=b"".join(frames),
            index=self._emitted,
        )
        if segment.duration_ms < self.params.min_segment_ms:
            return None
        self._emitted += 1
        return segment
