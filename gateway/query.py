"""An empty query value counts as absent: `?since=&limit=` reads as neither being sent.

The contract writes query parameters that way (`GET /v1/reviews?since=&limit=`), and clients
fill such templates with empty strings; FastAPI would parse "" as a time or a number and
answer 422. Pairs with a value pass exactly as sent, so a bad value is still a 422.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


def drop_empty_values(query: bytes) -> bytes:
    """`since=&limit=5&wait` -> `limit=5`: pairs without a value (or an `=`) left out."""
    return b"&".join(pair for pair in query.split(b"&") if pair.partition(b"=")[2])


class EmptyQueryValuesAbsent:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("query_string"):
            scope = dict(scope, query_string=drop_empty_values(scope["query_string"]))
        await self.app(scope, receive, send)
