"""kafka-python client options from the one settings model (addresses, SASL / TLS, session timeouts).

Every kafka-python client of emostream (topic admin, `send`, `tail`, tests) builds its options here,
so pointing the clients at a real Kafka cluster is a matter of `EMOSTREAM_KAFKA__*` variables only.
"""

from typing import Any

from emostream.schemas.settings import KafkaSettings

__all__ = ["CLIENT_REQUEST_TIMEOUT_MS", "kafka_python_options"]

CLIENT_REQUEST_TIMEOUT_MS = (
    15_000  # per request; Tansu answers in milliseconds, a real cluster in < 1 s
)


def kafka_python_options(kafka: KafkaSettings, *, client_id: str) -> dict[str, Any]:
    """Connection and security options shared by KafkaProducer, KafkaConsumer and KafkaAdminClient."""
    options: dict[str, Any] = {
        "bootstrap_servers": [
            address.strip() for address in kafka.bootstrap_servers.split(",") if address.strip()
        ],
        "client_id": client_id,
        "security_protocol": kafka.security_protocol,
        "request_timeout_ms": CLIENT_REQUEST_TIMEOUT_MS,
    }
    if kafka.sasl_mechanism:
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = (
            kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
        )
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(kafka, name)
        if value:
            options[name] = value
    return options


def consumer_group_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Group timeouts: short, because some brokers (Tansu) hold a JoinGroup reply for ~half of it."""
    return {
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
    }
