"""Kafka record headers as text: the codec shared by every header-carrying wire format.

Header values are ASCII text (decimal numbers, `true` / `false`) so a gateway in any language, or
`kcat -H name=value`, can produce them without a serialisation library.
"""

from collections.abc import Iterable, Mapping

KafkaHeaders = list[tuple[str, bytes]]


def headers_to_text(headers: Iterable[tuple[str, bytes | None]] | Mapping[str, bytes | None]) -> dict[str, str]:
    """Decode Kafka headers to a name -> text mapping (last value wins on duplicate names)."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    decoded: dict[str, str] = {}
    for name, raw in items:
        if raw is None:
            continue
        try:
            decoded[name] = raw.decode("ascii") if isinstance(raw, (bytes, bytearray)) else str(raw)
        except UnicodeDecodeError as error:
            from emostream.schemas.errors import RecordError

            raise RecordError(f"header {name!r}: value is not ASCII text ({error})") from None
    return decoded


def text_to_headers(fields: Mapping[str, object]) -> KafkaHeaders:
    """Encode a name -> value mapping as Kafka headers; None values are left out, booleans as true/false."""
    headers: KafkaHeaders = []
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif hasattr(value, "value"):  # enums
            text = str(value.value)
        else:
            text = str(value)
        headers.append((name, text.encode("ascii")))
    return headers
