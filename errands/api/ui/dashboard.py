"""The dashboard's routes: sessions, CSRF and login around the pages of pages.py.

Every page runs on the API's request threads (backend.py), with a pooled
connection taken only when it reads the database. With API tokens, a page asks
for a session cookie (a login form exchanges a token for one); without, a
visitor gets a session at once, to carry the CSRF token of its forms. Every
POST but the login carries that token.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jinja2
import psycopg
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from errands.api.backend import Backend
from errands.api.guesses import Guesses
from errands.api.inputs import body
from errands.api.tokens import Tokens
from errands.api.ui.session import (
    COOKIE,
    LIFETIME_SECONDS,
    Session,
    Sessions,
    kept_secret,
    log_out,
    logged_out,
    same_text,
)

Conn = psycopg.Connection[Any]
SECURITY_HEADERS = {
    # No inline script or style, nothing from another origin: a payload that
    # slipped through escaping still could not run.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# Where a login may send the browser: a dashboard path in visible ASCII, nothing that a
# browser would read as another site or that a header cannot carry (CR, LF).
_SAFE_NEXT = re.compile(r"/ui(?:[/?][\x21-\x5b\x5d-\x7e]*)?")


@dataclass
class Call:
    """One request to a page, read on the event loop, served on a request thread."""

    method: str
    path: str
    params: dict[str, str]  # from the path
    query: dict[str, str]  # a repeated parameter keeps its last value
    body: bytes
    cookie: str | None
    https: bool  # per X-Forwarded-Proto, from a TLS-terminating proxy
    client: str  # the peer's address
    backend: Backend
    session: Session | None = None

    @classmethod
    async def read(cls, request: Request, backend: Backend) -> Call:
        return cls(
            request.method,
            request.url.path,
            dict(request.path_params),
            dict(request.query_params),
            await body(request) if request.method == "POST" else b"",
            request.cookies.get(COOKIE),
            request.headers.get("x-forwarded-proto", "").lower() == "https",
            str((request.scope.get("client") or ("",))[0]),
            backend,
        )

    @property
    def form(self) -> dict[str, str]:
        """The fields of a urlencoded form body; undecodable bytes become U+FFFD."""
        return dict(parse_qsl(self.body.decode("utf-8", "replace")))

    def connect(self) -> AbstractContextManager[Conn]:
        """A pooled connection, taken only by a page that reads the database."""
        return self.backend.connection()


Page = Callable[[Call], Response]


class Dashboard:
    """Answers `/` and `/ui/...`; everything else belongs to the API."""

    def __init__(
        self,
        tokens: tuple[str, ...],
        guesses: Guesses,
        backend: Backend,
        secret_key: str | None,
    ) -> None:
        self.tokens = Tokens(tokens)
        self.sessions = Sessions(tokens, secret_key, self._kept_secret)
        self.guesses = guesses  # shared with the API's bearer tokens
        self.backend = backend
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("errands.api.ui", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    @staticmethod
    def serves(path: str) -> bool:
        return path in ("/", "/ui") or path.startswith("/ui/")

    def routes(self, pages: list[tuple[str, str, Page]], not_found: Page) -> list[BaseRoute]:
        return [
            Route("/", lambda request: RedirectResponse("/ui", 303)),
            Route("/ui/login", self._login, methods=["GET", "POST"]),
            Mount("/ui/static", StaticFiles(packages=[("errands.api.ui", "static")])),
            *(Route(path, self._endpoint(page), methods=[method]) for method, path, page in pages),
            Route("/ui/{rest:path}", self._endpoint(not_found), methods=["GET", "POST"]),
        ]

    def render(self, call: Call, template: str, status: int = 200, **context: Any) -> Response:
        """A page in the layout, with the chrome every page shows around it."""
        chrome = {
            "csrf": call.session.csrf if call.session else "",
            "open_access": not self.tokens.required,
            "path": call.path,
            "notice": context.pop("notice", None),
        }
        return self.bare(template, status, **chrome, **context)

    def bare(self, template: str, status: int, **context: Any) -> Response:
        body = self.templates.get_template(template).render(**context)
        return HTMLResponse(body, status, headers=SECURITY_HEADERS)

    # -- sessions ----------------------------------------------------------------------------

    def _endpoint(self, page: Page) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            call = await Call.read(request, self.backend)
            return await self.backend.run(self._serve, page, call)

        return endpoint

    def _serve(self, page: Page, call: Call) -> Response:
        call.session = self._session(call)
        new_cookie = None
        if call.session is None:
            if self.tokens.required and call.method == "GET":
                return redirect("/ui/login?" + urlencode({"next": call.path}))
            if self.tokens.required:
                return self.bare("login.html", 401, error="Log in first.", next="/ui")
            if call.method != "GET":
                return self.refused(call)
            # Open dashboard: a visitor gets a session at once, to carry the CSRF token.
            call.session, new_cookie = self.sessions.new()
        if call.method == "POST" and not same_text(call.form.get("csrf", ""), call.session.csrf):
            return self.refused(call)
        answer = page(call)
        if new_cookie is not None:
            _set_cookie(answer, new_cookie, call.https)
        return answer

    def _session(self, call: Call) -> Session | None:
        """The request's session, unless its cookie is forged, expired or logged out."""
        session = self.sessions.read(call.cookie)
        if session is None or not self.tokens.required:
            return session  # an open dashboard hands a session to anyone who asks
        with call.connect() as conn:
            return None if logged_out(conn, session) else session

    def _kept_secret(self) -> str:
        with self.backend.connection() as conn:
            return kept_secret(conn)

    def refused(self, call: Call) -> Response:
        text = "This form expired or came from another site. Reload the page and try again."
        return self.render(call, "message.html", 403, title="Refused", text=text)

    def log_out(self, call: Call) -> Response:
        if self.tokens.required and call.session is not None:
            with call.connect() as conn:
                log_out(conn, call.session)
        answer = redirect("/ui/login" if self.tokens.required else "/ui")
        _set_cookie(answer, "", call.https, max_age=0)
        return answer

    # -- login -------------------------------------------------------------------------------

    async def _login(self, request: Request) -> Response:
        call = await Call.read(request, self.backend)
        return await self.backend.run(self._log_in, call)

    def _log_in(self, call: Call) -> Response:
        target = safe_next(call.query.get("next") or call.form.get("next"))
        if not self.tokens.required:
            return redirect(target)
        if call.method == "GET":
            return self.bare("login.html", 200, error=None, next=target)
        if not self.tokens.matches(call.form.get("token", "").strip().encode()):
            if wait := self.guesses.refuse(call.client):
                error = f"Too many refused tokens from your address. Try again in {wait} s."
                answer = self.bare("login.html", 429, error=error, next=target)
                answer.headers["Retry-After"] = str(wait)
                return answer
            return self.bare("login.html", 401, error="That token is not accepted.", next=target)
        _, cookie = self.sessions.new()
        answer = redirect(target)
        _set_cookie(answer, cookie, call.https)
        return answer


def redirect(location: str) -> Response:
    return RedirectResponse(location, 303)


def safe_next(target: str | None) -> str:
    """Only a dashboard path: a login must never send the browser to another site."""
    return target if target and _SAFE_NEXT.fullmatch(target) else "/ui"


def _set_cookie(
    response: Response, value: str, https: bool, max_age: int = LIFETIME_SECONDS
) -> None:
    """The session cookie: never readable by scripts, never sent from other sites."""
    response.set_cookie(
        COOKIE,
        value,
        max_age=max_age,
        path="/ui",
        secure=https,
        httponly=True,
        samesite="strict",
    )
