"""Dashboard sessions and CSRF tokens: cookies signed by itsdangerous, and the list of those
logged out.

A session cookie carries a random nonce, signed with its time by itsdangerous
under the dashboard's secret: ERRANDS_SECRET_KEY when set, else a random key
generated once and kept in the database (errands_dashboard_secret), so that a
cookie works on every API process and host of one database. The secret is never
derived from an API token: a cookie must not let anyone test guesses at a token
offline. The tokens do enter the salt, so removing or changing one ends every
session. The CSRF token of a form is the nonce's signature under a salt of its
own: a page from another site can neither read it nor guess it.

Logging out clears the cookie in the browser, but a copy of it (taken from a
shared machine, a proxy's log) would stay valid until its expiry: the session's
nonce is therefore written to `errands_dashboard_logouts`, which every API
process reads, and a cookie naming it is refused from then on.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from itsdangerous import BadData, Signer, URLSafeTimedSerializer

COOKIE = "errands_session"
LIFETIME_SECONDS = 12 * 3600

# A logout is kept until its cookie expires; each logout prunes those that have.
_LOG_OUT = """
with expired as (delete from errands_dashboard_logouts where expires_at < now())
insert into errands_dashboard_logouts (nonce, expires_at) values (%s, to_timestamp(%s))
on conflict (nonce) do nothing
"""
_LOGGED_OUT = "select exists (select from errands_dashboard_logouts where nonce = %s)"
# The first API process to need the secret makes it; every other one reads that one. A
# process racing the first one's insert sees no row (its snapshot predates that commit):
# it asks again.
_KEEP_SECRET = """
with made as (
    insert into errands_dashboard_secret (secret) values (%s)
    on conflict do nothing returning secret
)
select secret from made union all select secret from errands_dashboard_secret limit 1
"""

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Session:
    nonce: str
    csrf: str
    expires: int  # Unix time from which its cookie is refused anyway


def same_text(presented: str, expected: str) -> bool:
    """Equality in constant time of any two texts: `hmac.compare_digest` refuses a str
    with a non-ASCII character, and what a client presents may hold one."""
    return hmac.compare_digest(presented.encode(), expected.encode())


def log_out(conn: Conn, session: Session) -> None:
    """End the session on every API process: its cookie is refused from now on."""
    conn.execute(_LOG_OUT, (session.nonce, session.expires))


def logged_out(conn: Conn, session: Session) -> bool:
    row = conn.execute(_LOGGED_OUT, (session.nonce,)).fetchone()
    return bool(row and row[0])


def kept_secret(conn: Conn) -> str:
    """The database's dashboard secret, made now if no API process has made it yet."""
    while True:
        row = conn.execute(_KEEP_SECRET, (secrets.token_urlsafe(32),)).fetchone()
        if row is not None:
            return str(row[0])


class Sessions:
    """Signs and reads session cookies. Without a secret key, `kept_secret` gives it, on
    first use: the API starts even while the database is down."""

    def __init__(
        self, tokens: tuple[str, ...], secret_key: str | None, kept_secret: Callable[[], str]
    ) -> None:
        self._salt = (
            "errands.dashboard:"
            + hashlib.sha256(b"\0".join(sorted(token.encode() for token in tokens))).hexdigest()
        )
        self._secret = secret_key
        self._kept_secret = kept_secret
        self._signers: tuple[URLSafeTimedSerializer, Signer] | None = None
        self._lock = threading.Lock()

    def new(self) -> tuple[Session, str]:
        """A fresh session and the cookie value that carries it."""
        serializer, signer = self._signing()
        nonce = secrets.token_urlsafe(18)
        cookie = serializer.dumps(nonce)
        _, signed_at = serializer.loads(cookie, return_timestamp=True)
        return self._session(signer, nonce, int(signed_at.timestamp())), cookie

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie value carries, if its signature holds and it has not expired."""
        if not cookie:
            return None
        serializer, signer = self._signing()
        try:
            nonce, signed_at = serializer.loads(
                cookie, max_age=LIFETIME_SECONDS, return_timestamp=True
            )
        except (BadData, UnicodeError):
            return None
        if not isinstance(nonce, str):
            return None
        return self._session(signer, nonce, int(signed_at.timestamp()))

    def _session(self, signer: Signer, nonce: str, signed_at: int) -> Session:
        csrf = signer.get_signature(nonce).decode()
        return Session(nonce, csrf, signed_at + LIFETIME_SECONDS)

    def _signing(self) -> tuple[URLSafeTimedSerializer, Signer]:
        with self._lock:
            if self._signers is None:
                secret = self._secret or self._kept_secret()
                # SHA-256 rather than itsdangerous' default, SHA-1.
                self._signers = (
                    URLSafeTimedSerializer(
                        secret,
                        salt=self._salt + ":session",
                        signer_kwargs={"digest_method": hashlib.sha256},
                    ),
                    Signer(secret, salt=self._salt + ":csrf", digest_method=hashlib.sha256),
                )
            return self._signers
