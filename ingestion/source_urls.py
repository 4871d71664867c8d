"""Source URLs hold database passwords: how they are checked, shown and kept out of messages.

A URL is shown (logs, the API, the admin, `manage.py sources list`) only as `url_password_hidden(url)`, and any
text that may quote it (a driver's error message) goes through `text_redacted(text, url)` first.
"""

from __future__ import annotations

from urllib.parse import quote, quote_plus

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

HIDDEN = "***"
# Query parameters drivers accept a secret in (psycopg2 takes `?password=`, as libpq does `sslpassword`).
SECRET_QUERY_PARAMETERS = frozenset({"password", "passwd", "pwd", "sslpassword", "secret", "token"})
# Shorter secrets would match all over an error message and hide nothing worth hiding.
MIN_REDACTED_LENGTH = 4


class SourceUrlError(ValueError):
    """A source URL that cannot be used; the message never quotes its password."""


def source_url_parse(url: str) -> URL:
    """The URL as SQLAlchemy reads it, or SourceUrlError saying what is wrong with it.

    A password with an `@` that is not written %40 reads as part of the host (`user:pa@ss@host` has host
    `ss@host`): the driver would then quote the rest of the password back in its "could not translate host name"
    error, so such a URL is refused rather than tried."""
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018  (a port that is not a number raises here, not in make_url)
    except (ArgumentError, ValueError, TypeError):
        raise SourceUrlError("not an SQLAlchemy URL (dialect+driver://user:password@host:port/database)") from None
    if parsed.host and "@" in parsed.host:
        raise SourceUrlError("the password (or user name) holds an '@': write it percent-encoded, as %40")
    return parsed


def url_password_hidden(url: str) -> str:
    """`url` with its password, and any secret query parameter, shown as ***."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return "<invalid URL>"
    if parsed.host and "@" in parsed.host:  # the rest of a password with a bare '@' (see source_url_parse)
        parsed = parsed.set(host=parsed.host.rpartition("@")[2], password=HIDDEN)
    secret_keys = [key for key in parsed.query if key.lower() in SECRET_QUERY_PARAMETERS]
    if secret_keys:
        parsed = parsed.update_query_dict(dict.fromkeys(secret_keys, HIDDEN))
    try:
        return parsed.render_as_string(hide_password=True).replace(quote(HIDDEN, safe=""), HIDDEN)
    except (ValueError, TypeError):
        return "<invalid URL>"


def url_secrets(url: str) -> list[str]:
    """Every string of `url` that must not appear in a message: its password as given and as the driver receives
    it, secret query parameters, and what a bare '@' pushed into the host."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return [url]  # unreadable: the whole of it is the secret
    found = []
    if parsed.password:
        found.append(str(parsed.password))
    if parsed.host and "@" in parsed.host:
        pushed = parsed.host.rpartition("@")[0]
        found.extend([pushed, *pushed.split("@"), f"{parsed.password or ''}@{pushed}"])
    for key, value in parsed.query.items():
        if key.lower() in SECRET_QUERY_PARAMETERS:
            found.extend([value] if isinstance(value, str) else value)
    variants = set()
    for secret in found:
        variants.update({secret, quote(secret, safe=""), quote_plus(secret)})
    return sorted((s for s in variants if len(s) >= MIN_REDACTED_LENGTH), key=len, reverse=True)


def text_redacted(text: str, url: str) -> str:
    """`text` with every secret of `url` replaced by ***."""
    for secret in url_secrets(url):
        text = text.replace(secret, HIDDEN)
    return text


def url_with_kept_password(new_url: str, stored_url: str) -> str:
    """What an edit of a source URL means where a secret was left as the *** it is shown as: the stored secret,
    provided the URL still points to the same server as the same user. Otherwise SourceUrlError: a kept password
    must never be sent to another host."""
    new = source_url_parse(new_url)
    hidden_query = [key for key, value in new.query.items()
                    if key.lower() in SECRET_QUERY_PARAMETERS and value == HIDDEN]
    if new.password != HIDDEN and not hidden_query:
        return new_url
    refusal = SourceUrlError("type the password: *** keeps the stored one only for the same user on the same server")
    try:
        stored = make_url(stored_url)
    except (ArgumentError, ValueError, TypeError):
        raise refusal from None
    if ((new.get_backend_name(), new.username, new.host, new.port)
            != (stored.get_backend_name(), stored.username, stored.host, stored.port)):
        raise refusal
    if new.password == HIDDEN:
        if not stored.password:
            raise refusal
        new = new.set(password=stored.password)
    for key in hidden_query:
        if key not in stored.query:
            raise refusal
        new = new.update_query_dict({key: stored.query[key]})
    return new.render_as_string(hide_password=False)


def with_installed_driver(url):
    """SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the project installs psycopg2 (whose COPY it uses).
    `url`: a sqlalchemy URL; returns one. The `postgres://` spelling (Heroku's, and accepted in DATABASE_URL) is
    the same driver: SQLAlchemy has no dialect of that name."""
    return url.set(drivername="postgresql+psycopg2") if url.drivername in ("postgresql", "postgres") else url
