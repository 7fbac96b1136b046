"""The API tokens (ERRANDS_API_TOKENS), checked in constant time by the API and the dashboard."""

from __future__ import annotations

import hmac

# Shorter tokens are worth a warning: a right guess is never refused (see guesses.py), so
# a token's length is what keeps guessing it hopeless.
STRONG_LENGTH = 20


class Tokens:
    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._known = [token.encode() for token in tokens]

    @property
    def weak(self) -> int:
        """How many tokens are shorter than STRONG_LENGTH bytes."""
        return sum(len(known) < STRONG_LENGTH for known in self._known)

    @property
    def required(self) -> bool:
        """Whether requests must present a token: false when none is configured."""
        return bool(self._known)

    def matches(self, presented: bytes) -> bool:
        """Whether `presented` is one of the tokens. It is compared with every token, so the
        time taken says nothing about which one nearly matched."""
        return any([hmac.compare_digest(presented, known) for known in self._known])

    def bearer(self, authorization: bytes) -> bool:
        """Whether an Authorization header's value is `Bearer <one of the tokens>`."""
        scheme, _, token = authorization.partition(b" ")
        return scheme.lower() == b"bearer" and self.matches(token.strip())
