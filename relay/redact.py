"""No password, nor any part of one, in any output: masking and scrubbing.

`mask_url` masks the password of a PostgreSQL URL or keyword/value conninfo string, in any
shape libpq accepts (spaces around ``=``, quoted values, unencoded ``%`` or ``@``, a
``password`` query parameter). `remember` records the secrets of the settings in use;
`scrub` removes them from any text (error lines, log fields), so a library message that
echoes part of a malformed URL cannot leak one.
"""

from __future__ import annotations

import re
import threading
from collections.abc import MutableMapping
from typing import Any, Final

MASK: Final = "***"
#: Shorter pieces would mask ordinary words of every log line.
MIN_PIECE: Final = 3

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)$", re.DOTALL)
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")

_lock = threading.Lock()
_secrets: set[str] = set()


def _userinfo(rest: str) -> tuple[str, str] | None:
    """(user, raw password) of a URL's part after ``://``; None without a password.

    The user-info ends at the LAST ``@``: a password with an unencoded ``@`` is all of it.
    """
    at = rest.rfind("@")
    if at < 0:
        return None
    user, colon, password = rest[:at].partition(":")
    return (user, password) if colon else None


def mask_url(url: str) -> str:
    """The URL or conninfo string with its password replaced by ``***``."""
    match = _SCHEME.match(url)
    if not match:
        return _KEYWORD_PASSWORD.sub(lambda m: m[1] + MASK, url)
    scheme, rest = match.groups()
    info = _userinfo(rest)
    if info is not None:
        user, _ = info
        rest = f"{user}:{MASK}{rest[rest.rfind('@') :]}"
    return scheme + _QUERY_PASSWORD.sub(lambda m: m[1] + MASK, rest)


def passwords(url: str) -> list[str]:
    """Every spelling of the passwords in `url`: raw, percent-decoded, unquoted."""
    found: list[str] = []
    match = _SCHEME.match(url)
    if match:
        info = _userinfo(match[2])
        if info is not None:
            found.append(info[1])
        found.extend(m[0].split("=", 1)[1] for m in _QUERY_PASSWORD.finditer(match[2]))
    else:
        for m in _KEYWORD_PASSWORD.finditer(url):
            value = m[2]
            if value.startswith("'"):
                value = re.sub(r"\\(.)", r"\1", value[1:].removesuffix("'"))
            found.append(value)
    decoded = [_PERCENT.sub(lambda m: chr(int(m[1], 16)), p) for p in found]
    return [p for p in dict.fromkeys([*found, *decoded]) if p]


def unencoded(password: str) -> str | None:
    """The first character a URL password must percent-encode and does not, or None."""
    for index, char in enumerate(password):
        if char in "@/?#[]" or (char == "%" and not _PERCENT.match(password, index)):
            return char
    return None


def pieces(secret: str) -> list[str]:
    """The secret and the parts libpq may echo of it (split at ``@ % : /`` and spaces)."""
    parts = [secret, *re.split(r"[@%:/?#\s]", secret)]
    return [p for p in dict.fromkeys(parts) if len(p) >= MIN_PIECE or p == secret]


def remember(*secrets: str) -> None:
    """Scrub these secrets (and their pieces) from every error line and log from now on."""
    with _lock:
        for secret in secrets:
            if secret:
                _secrets.update(pieces(secret))


def remember_url(url: str) -> None:
    """`remember` the passwords of a database URL or conninfo string."""
    remember(*passwords(url))


def scrub(text: str) -> str:
    """`text` without any remembered secret."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def overlaps(text: str, secret: str) -> bool:
    """True when `text` holds the secret or a piece of it, or is itself a piece of it."""
    if not secret:
        return False
    if text and text in secret:
        return True
    return any(piece in text for piece in pieces(secret))


def log_processor(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Structlog processor: scrub remembered secrets from every string field."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = scrub(value)
    return event_dict
