"""In front of every route: the request log, the framing checks and the bearer token.

Both are ASGI middleware around the Starlette router, so that a request is
authenticated before it is routed: without a token, not even which paths
exist is told (GET /nope and DELETE /jobs are 401, not 404 or 405).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from errands.api.errors import HTTPError, internal_error
from errands.api.guesses import Guesses
from errands.api.inputs import check_framing
from errands.api.tokens import Tokens
from errands.log import get_logger

_log = get_logger("errands.api")


class RequestLog:
    """One line per request: method, path, status, duration and the job id when there is one.

    `quiet_paths` (probes, scrapes) are logged at debug unless they fail with a 5xx. An
    error no handler expected is logged here and answered 500 in the API's shape.
    """

    def __init__(self, app: ASGIApp, quiet_paths: frozenset[str]) -> None:
        self.app = app
        self._quiet = quiet_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            _log.exception("unexpected error", method=scope["method"], path=scope["path"])
            if status is None:
                await internal_error()(scope, receive, sending)
        quiet = scope["path"] in self._quiet and (status or 500) < 500
        (_log.debug if quiet else _log.info)(
            "request",
            method=scope["method"],
            path=scope["path"],
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            job_id=scope.get("state", {}).get("job_id"),
        )


class Gate:
    """Refuses what no route should see: repeated or unknown framing, a missing or wrong token.

    `own_auth(path)` names the paths that authenticate themselves (the dashboard's
    session) or not at all (health, readiness, metrics).
    """

    def __init__(
        self, app: ASGIApp, tokens: Tokens, guesses: Guesses, own_auth: Callable[[str], bool]
    ) -> None:
        self.app = app
        self._tokens = tokens
        self._guesses = guesses
        self._own_auth = own_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                self._check(scope)
            except HTTPError as refusal:
                await refusal.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope) -> None:
        headers = check_framing(scope["headers"])
        if not self._tokens.required or self._own_auth(scope["path"]):
            return
        given = headers.get(b"authorization")
        if given is not None and self._tokens.bearer(given):
            return  # a right token is never held back, whatever its address guessed
        if given is not None:  # a guess; a request without a token is not
            address = str((scope.get("client") or ("",))[0])
            if wait := self._guesses.refuse(address):
                raise HTTPError(
                    429,
                    "too_many_refused_tokens",
                    f"too many refused tokens from this address; try again in {wait} s",
                    headers={"Retry-After": str(wait)},
                )
        raise HTTPError(
            401,
            "unauthorized",
            "send Authorization: Bearer <token> with one of the configured tokens",
            headers={"WWW-Authenticate": 'Bearer realm="errands"'},
        )
