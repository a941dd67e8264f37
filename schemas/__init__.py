"""Wire formats and configuration of emostream: the only place a record's shape is defined.

Layering: `schemas` imports nothing else of emostream; every other package may import it.
"""

from emostream.schemas.audio import (
    AUDIO_FORMAT_VERSION,
    SUPPORTED_SAMPLE_RATES_HZ,
    AudioChunkHeader,
    AudioEncoding,
    ChannelRole,
)
from emostream.schemas.dead_letter import DeadLetter
from emostream.schemas.errors import RecordError
from emostream.schemas.event import EmotionEvent, LatencyBreakdown
from emostream.schemas.segment import SegmentHeader

__all__ = [
    "AUDIO_FORMAT_VERSION",
    "SUPPORTED_SAMPLE_RATES_HZ",
    "AudioChunkHeader",
    "AudioEncoding",
    "ChannelRole",
    "DeadLetter",
    "EmotionEvent",
    "LatencyBreakdown",
    "RecordError",
    "SegmentHeader",
]
