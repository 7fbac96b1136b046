"""errands in a Starlette or FastAPI application: one AsyncClient for the application's life.

    from errands.contrib.starlette import lifespan
    app = FastAPI(lifespan=lifespan)     # or Starlette(lifespan=lifespan)

The client opens when the application starts (a database errands may not use
fails the start-up, naming what to do) and closes when it stops. Handlers find
it as `request.state.errands`, or as a FastAPI dependency, `Depends(client)`;
and `await task.aenqueue(...)` uses it, since it is the default AsyncClient of
the application's event loop. Starlette is a dependency of errands already;
this module imports nothing of FastAPI. docs/guides/fastapi.md has the example.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.requests import Request

from errands.async_client import AsyncClient, serving_as_default

__all__ = ["client", "lifespan"]

STATE = "errands"  # the name of the client in the application's state


@asynccontextmanager
async def lifespan(
    app: object, *, dsn: str | None = None, max_connections: int = 4
) -> AsyncIterator[dict[str, AsyncClient]]:
    """Open an AsyncClient for the application, and close it at shutdown.

    `dsn` None: the environment's database (ERRANDS_DATABASE_URL, DATABASE_URL).
    With options, `functools.partial(lifespan, dsn=...)`; inside a lifespan of
    your own, `async with lifespan(app) as state: yield {**state, ...}`.
    """
    async with AsyncClient(dsn, max_connections=max_connections) as errands_client:
        await errands_client.open()
        with serving_as_default(errands_client):
            yield {STATE: errands_client}


def client(request: Request) -> AsyncClient:
    """The application's AsyncClient: `client: AsyncClient = Depends(client)` in FastAPI."""
    found: AsyncClient = getattr(request.state, STATE)
    return found
