"""No secret in a log, an error, a dead letter or CLI output: Redis passwords and URL tokens are
redacted wherever an address is shown."""

import logging

import pytest
from emostream.schemas.redaction import redact_text, redact_url
from emostream.schemas.settings import RedisSettings
from emostream.workers.runtime.result_store import ResultStore, StoreUnavailable
from emostream.workers.stack.services import find_free_port


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rediss://app:hunter2@cache:6380/0", "rediss://app:***@cache:6380/0"),
        ("redis://:hunter2@cache/0", "redis://:***@cache/0"),
        ("redis://hunter2@cache/0", "redis://***@cache/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("https://hooks.example/in?token=abc&x=1", "https://hooks.example/in?token=***&x=***"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_text_replaces_urls_and_secret_values() -> None:
    text = "POST https://u:pw@h/x?token=abc failed: token abc rejected"
    assert redact_text(text, "https://u:pw@h/x?token=abc", secrets=["abc"]) == (
        "POST https://u:***@h/x?token=*** failed: token *** rejected"
    )


async def test_redis_errors_and_logs_do_not_show_the_password(caplog) -> None:
    url = f"redis://app:hunter2@127.0.0.1:{find_free_port()}/0"  # nothing listens there
    store = ResultStore(RedisSettings(url=url, socket_timeout_s=0.2))
    caplog.set_level(logging.WARNING)
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await store.load_checkpoint("call-1:customer")
    finally:
        await store.close()
    assert "hunter2" not in str(raised.value) and "app:***@127.0.0.1" in str(raised.value)
    assert caplog.records and all("hunter2" not in record.getMessage() for record in caplog.records)
