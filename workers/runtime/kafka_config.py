"""Kafka client options from the one settings model (addresses, SASL / TLS, session timeouts).

Every kafka-python client of emostream (topic admin, `send`, `tail`, tests) and the aiokafka batch
consumer build their options here (faust's credentials: `workers.runtime.app.broker_credentials`),
so pointing the clients at a real Kafka cluster is a matter of `EMOSTREAM_KAFKA__*` variables only.
"""

from typing import Any

from emostream.schemas.settings import KafkaSettings

__all__ = ["CLIENT_REQUEST_TIMEOUT_MS", "aiokafka_options", "consumer_group_options", "kafka_python_options",
           "require_sasl_mechanism"]

CLIENT_REQUEST_TIMEOUT_MS = (
    15_000  # per request; Tansu answers in milliseconds, a real cluster in < 1 s
)


def require_sasl_mechanism(kafka: KafkaSettings) -> str:
    """The SASL mechanism a SASL security protocol needs; a clear error naming the setting if unset."""
    if not kafka.sasl_mechanism:
        raise ValueError(
            f"kafka security_protocol {kafka.security_protocol} needs EMOSTREAM_KAFKA__SASL_MECHANISM "
            "(PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
        )
    return kafka.sasl_mechanism


def _connection_options(kafka: KafkaSettings, *, client_id: str) -> dict[str, Any]:
    """What kafka-python's and aiokafka's clients take alike: addresses, client id, protocol, timeout."""
    return {
        "bootstrap_servers": [
            address.strip() for address in kafka.bootstrap_servers.split(",") if address.strip()
        ],
        "client_id": client_id,
        "security_protocol": kafka.security_protocol,
        "request_timeout_ms": CLIENT_REQUEST_TIMEOUT_MS,
    }


def _sasl_options(kafka: KafkaSettings, mechanism: str) -> dict[str, Any]:
    """SASL mechanism and PLAIN / SCRAM credentials, under the names both clients use."""
    return {
        "sasl_mechanism": mechanism,
        "sasl_plain_username": kafka.sasl_username,
        "sasl_plain_password": kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
    }


def kafka_python_options(kafka: KafkaSettings, *, client_id: str) -> dict[str, Any]:
    """Connection and security options shared by KafkaProducer, KafkaConsumer and KafkaAdminClient."""
    options = _connection_options(kafka, client_id=client_id)
    if kafka.sasl_mechanism:
        options.update(_sasl_options(kafka, kafka.sasl_mechanism))
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


def aiokafka_options(kafka: KafkaSettings, *, client_id: str) -> dict[str, Any]:
    """Connection and security options of an aiokafka client (the VAD stage's batch consumer); the
    same settings as faust's (`workers.runtime.app.broker_credentials`) and kafka-python's above."""
    options = _connection_options(kafka, client_id=client_id)
    if kafka.security_protocol.startswith("SASL"):
        options.update(_sasl_options(kafka, require_sasl_mechanism(kafka)))
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = kafka.ssl_context()
    return options
