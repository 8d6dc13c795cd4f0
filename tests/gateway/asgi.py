"""A raw ASGI client that counts how many body bytes the app pulled with `receive`.

The TestClient hands the app the whole body however little it reads; this one feeds chunks
on demand, so a test can prove a request was answered without reading its body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message

CHUNK = 64 * 1024
BOUNDARY = "eldefect-test-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


@dataclass
class Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    bytes_read: int = 0  # body bytes the app asked for

    def json(self) -> Any:
        return json.loads(self.body)


def part_head(name: str, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return (
        f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


def multipart(
    files: Iterable[tuple[str, str, bytes]], fields: Iterable[tuple[str, str]] = ()
) -> list[bytes]:
    """The pieces of a multipart body: (field, filename, data) files and (name, value) fields."""
    pieces: list[bytes] = []
    for name, value in fields:
        pieces += [part_head(name), value.encode(), b"\r\n"]
    for name, filename, data in files:
        pieces += [part_head(name, filename), data, b"\r\n"]
    pieces.append(f"--{BOUNDARY}--\r\n".encode())
    return pieces


def zeros(total: int) -> Iterator[bytes]:
    """`total` zero bytes, made one chunk at a time (a huge body costs nothing to describe)."""
    while total > 0:
        size = min(CHUNK, total)
        total -= size
        yield bytes(size)


def _chunked(pieces: Iterable[bytes]) -> Iterator[bytes]:
    for piece in pieces:
        view = memoryview(piece)
        for start in range(0, len(view), CHUNK):
            yield bytes(view[start : start + CHUNK])


def call(
    app: ASGIApp,
    path: str,
    *,
    headers: dict[str, str],
    body: Iterable[bytes] = (),
    content_length: int | None = None,
    method: str = "POST",
    disconnect: bool = False,
) -> Answer:
    """One request; `content_length` declares a length (None: streamed, no header).

    With `disconnect`, the client goes away once `body` is sent, before the body ends.
    """
    answer = Answer()
    raw_headers = [(b"host", b"testserver")]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if content_length is not None:
        raw_headers.append((b"content-length", str(content_length).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    chunks = _chunked(body)
    pending = next(chunks, None)

    async def receive() -> Message:
        nonlocal pending
        if pending is None:
            if disconnect:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": b"", "more_body": False}
        chunk, pending = pending, next(chunks, None)
        answer.bytes_read += len(chunk)
        more = pending is not None or disconnect
        return {"type": "http.request", "body": chunk, "more_body": more}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")

    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    return answer
