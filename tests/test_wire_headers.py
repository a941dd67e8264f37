"""Wire-format rules that protect Redis keys and gateways: ids are validated before they reach a key,
and the epoch header is optional (epoch 0 is implied, so existing gateways send nothing new)."""

import pytest
from emostream.plugins.testing import make_event
from emostream.schemas.audio import AudioChunkHeader
from emostream.schemas.errors import RecordError
from emostream.schemas.event import EmotionEvent
from pydantic import ValidationError


@pytest.mark.parametrize("session_id", ["call{42}", "call 42", "a" * 129, ""])
def test_session_id_is_validated_like_a_stream_id(session_id: str) -> None:
    """The session id becomes the analytics plugin's Redis hash tag (`call:{<id>}`)."""
    event = make_event("call-42:customer", 0, "angry")
    with pytest.raises(ValidationError, match="session_id"):
        EmotionEvent.model_validate({**event.model_dump(), "session_id": session_id})


def test_a_valid_session_id_is_the_call_id() -> None:
    event = make_event("call-42:customer", 0, "angry")
    assert EmotionEvent.model_validate({**event.model_dump(), "session_id": "conv-7"}).call_id == "conv-7"


def test_epoch_header_is_read_and_epoch_zero_is_not_sent() -> None:
    header = AudioChunkHeader.from_kafka(
        b"call-1:agent", [("v", b"1"), ("seq", b"0"), ("rate", b"8000"), ("epoch", b"2")]
    )
    assert header.epoch == 2
    assert ("epoch", b"2") in header.to_kafka_headers()
    plain = AudioChunkHeader(stream_id="call-1:agent", seq=0, sample_rate_hz=8000)
    assert plain.epoch == 0 and all(name != "epoch" for name, _ in plain.to_kafka_headers())
    with pytest.raises(RecordError, match="epoch"):
        AudioChunkHeader.from_kafka(b"call-1:agent", [("seq", b"0"), ("rate", b"8000"), ("epoch", b"-1")])
