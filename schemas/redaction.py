"""Redaction of secrets in addresses, for every log line, error, dead letter and CLI output.

`redact_url("rediss://app:hunter2@cache:6380/0")` -> `"rediss://app:***@cache:6380/0"`;
`redact_url("https://hooks.example/in?token=abc&x=1")` -> `"https://hooks.example/in?token=***&x=***"`.
A password in the user-info and every query value are replaced; scheme, user, host, port and path
stay, so the message still says where. Secrets placed in a URL's path cannot be told apart from the
path: put them in a header or the query instead.
"""

from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["REDACTED", "redact_text", "redact_url"]

REDACTED = "***"


def redact_text(text: str, *urls: str, secrets: Iterable[str] = ()) -> str:
    """`text` (e.g. a client library's error message) with each of `urls` in it redacted, and every
    occurrence of each of `secrets` replaced by `***`."""
    for url in urls:
        if url:
            text = text.replace(str(url), redact_url(url))
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def redact_url(url: str) -> str:
    """`url` with its password and query values replaced by `***` (unparseable input: all of it)."""
    try:
        parts = urlsplit(str(url))
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:  # user:password
                netloc = f"{userinfo.split(':', 1)[0]}:{REDACTED}@{host}"
            else:  # a bare token as user-info
                netloc = f"{REDACTED}@{host}"
        query = parts.query
        if query:
            query = urlencode(
                [(name, REDACTED) for name, _ in parse_qsl(query, keep_blank_values=True)],
                safe="*",
            )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return REDACTED
