"""Log output never shows a password written in a URL (`scheme://user:password@host`, `?password=...`).

The messages the product writes already say "***" (ingestion/source_urls.py); this formatter is the net under them,
for what a library or an unforeseen error message might quote. settings.LOGGING uses it for every process Django
configures, and pisa_site/celery.py puts it on the handlers the Celery worker and beat set up for themselves.
"""

from __future__ import annotations

import logging
import re

HIDDEN = "***"
# user:password@ in the authority of any scheme://. The password stops at the last '@' before the host; '/', '?',
# '#' and whitespace end the authority.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/?#@]*:)(?P<password>[^\s/?#]*)@")
_QUERY_SECRET = re.compile(r"(?i)(?P<head>[?&](?:password|passwd|pwd|sslpassword|secret|token)=)(?P<secret>[^&\s#]+)")


def text_passwords_hidden(text: str) -> str:
    if "://" not in text and "=" not in text:
        return text
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{HIDDEN}@" if m["password"] != HIDDEN else m[0], text)
    return _QUERY_SECRET.sub(lambda m: f"{m['head']}{HIDDEN}", text)


class PasswordHidingFormatter(logging.Formatter):
    """A logging.Formatter whose output (message, arguments and traceback alike) has URL passwords as ***."""

    def format(self, record: logging.LogRecord) -> str:
        return text_passwords_hidden(super().format(record))


class _HidingWrapper(logging.Formatter):
    """Wraps another formatter (Celery's colour one, say) and hides passwords in what it produces."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return text_passwords_hidden(self.inner.format(record))


def handlers_hide_passwords(logger: logging.Logger) -> None:
    """Make every handler of `logger` hide URL passwords (idempotent)."""
    for handler in logger.handlers:
        formatter = handler.formatter or logging.Formatter()
        if not isinstance(formatter, (PasswordHidingFormatter, _HidingWrapper)):
            handler.setFormatter(_HidingWrapper(formatter))
