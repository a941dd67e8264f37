"""Clients for the adapters that need Redis or Kafka, built from the one settings model.

`emostream.plugins` may not import `emostream.workers` (workers depend on plugins, not the reverse),
so the few lines that turn `RedisSettings` / `KafkaSettings` into client options live here, and the
workers use them too: this is the one Redis client factory of emostream (the Kafka TLS context is
`KafkaSettings.ssl_context()`).
"""

from __future__ import annotations

from typing import Any

from emostream.plugins.api import require
from emostream.schemas.settings import KafkaSettings, RedisSettings

PLUGIN_SOCKET_TIMEOUT_MIN_S = 5.0  # plugins block on reads (pub/sub, XREAD): never below this


def async_redis_client(
    redis_settings: RedisSettings,
    *,
    plugin: str = "emostream",
    url: str | None = None,
    socket_timeout_s: float | None = None,
) -> Any:
    """A `redis.asyncio.Redis` for `url` (default: the settings' url) with the settings' auth / TLS.

    `socket_timeout_s` defaults to the settings' timeout, raised to PLUGIN_SOCKET_TIMEOUT_MIN_S.
    """
    redis_asyncio = require("redis.asyncio", plugin=plugin, extra="redis")
    timeout_s = (
        socket_timeout_s
        if socket_timeout_s is not None
        else max(redis_settings.socket_timeout_s, PLUGIN_SOCKET_TIMEOUT_MIN_S)
    )
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "health_check_interval": 0,
        "retry_on_timeout": False,
        **redis_settings.auth_options(),
    }
    return redis_asyncio.Redis.from_url(url or redis_settings.url, **options)


def aiokafka_producer_options(kafka: KafkaSettings, *, client_id: str) -> dict[str, Any]:
    """AIOKafkaProducer options: acks=all, no idempotence (some brokers, e.g. Tansu, reject it)."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": False,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism:
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = kafka.ssl_context()
    return options
