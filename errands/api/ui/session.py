"""Dashboard sessions and CSRF tokens: signed cookies, and the list of those logged out.

A session cookie is `<nonce>.<expiry>.<signature>`, signed with HMAC-SHA256.
With API tokens configured, the key is derived from them, so a session works on
every API process and host that shares the tokens, and removing a token ends
every session; without tokens the key is random per process (a restart only
costs a reload). The CSRF token of a form is the HMAC of the session's nonce:
a page from another site can neither read it nor guess it.

Logging out clears the cookie in the browser, but a copy of it (taken from a
shared machine, a proxy's log) would stay valid until its expiry: the session's
nonce is therefore written to `errands_dashboard_logouts`, which every API
process reads, and a cookie naming it is refused from then on.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import psycopg

COOKIE = "errands_session"
LIFETIME_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Session:
    nonce: str
    csrf: str
    expires: int  # Unix time from which its cookie is refused anyway


# A logout is kept until its cookie expires; each logout prunes those that have.
_LOG_OUT = """
with expired as (delete from errands_dashboard_logouts where expires_at < now())
insert into errands_dashboard_logouts (nonce, expires_at) values (%s, to_timestamp(%s))
on conflict (nonce) do nothing
"""
_LOGGED_OUT = "select exists (select from errands_dashboard_logouts where nonce = %s)"


def same_text(presented: str, expected: str) -> bool:
    """Equality in constant time of any two texts: `hmac.compare_digest` refuses a str
    with a non-ASCII character, and what a client presents may hold one."""
    return hmac.compare_digest(presented.encode(), expected.encode())


def log_out(conn: psycopg.Connection[Any], session: Session) -> None:
    """End the session on every API process: its cookie is refused from now on."""
    conn.execute(_LOG_OUT, (session.nonce, session.expires))


def logged_out(conn: psycopg.Connection[Any], session: Session) -> bool:
    row = conn.execute(_LOGGED_OUT, (session.nonce,)).fetchone()
    return bool(row and row[0])


class Sessions:
    def __init__(self, tokens: tuple[str, ...]) -> None:
        self.login_required = bool(tokens)
        self._tokens = [token.encode() for token in tokens]
        self._key = (
            hashlib.sha256(b"errands-ui-session\0" + b"\0".join(sorted(self._tokens))).digest()
            if tokens
            else secrets.token_bytes(32)
        )

    def token_matches(self, presented: str) -> bool:
        """Whether `presented` is one of the API tokens; constant time, as the API checks."""
        matches = [hmac.compare_digest(presented.encode(), known) for known in self._tokens]
        return any(matches)

    def new(self) -> tuple[Session, str]:
        """A fresh session and the cookie value that carries it."""
        nonce = secrets.token_urlsafe(18)
        expires = int(time.time()) + LIFETIME_SECONDS
        signed = f"{nonce}.{expires}"
        return self._session(nonce, expires), f"{signed}.{self._sign(signed)}"

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie value carries, if its signature holds and it has not expired."""
        if not cookie or cookie.count(".") != 2:
            return None
        signed, _, signature = cookie.rpartition(".")
        nonce, _, expiry = signed.partition(".")
        if not same_text(signature, self._sign(signed)):
            return None
        if not re.fullmatch(r"[0-9]{1,12}", expiry) or int(expiry) < time.time():
            return None
        return self._session(nonce, int(expiry))

    def _session(self, nonce: str, expires: int) -> Session:
        return Session(nonce, self._sign("csrf:" + nonce), expires)

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()


def cookie_header(value: str, secure: bool, max_age: int = LIFETIME_SECONDS) -> str:
    """Set-Cookie for the session: never readable by scripts, never sent from other sites."""
    flags = f"Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    return f"{COOKIE}={value}; {flags}" + ("; Secure" if secure else "")


def read_cookie(header: str, name: str = COOKIE) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None
