"""Request-size and body-time limits for every route and every framing, and bounded heavy work.

:class:`BodyLimitMiddleware` sits under the routes as pure ASGI, so it sees the body exactly
as uvicorn delivers it whatever the framing (Content-Length, ``Transfer-Encoding: chunked``,
multipart inside either): a declared length over the route's limit is refused before a byte
is read; otherwise received bytes are counted and the read is aborted with 413 the moment
they cross the limit, and with 408 when the whole body has not arrived in time. Either
answer closes the connection (``Connection: close``), so the rest of an oversized or stalled
body is never read into the app. Nothing is spooled: routes get the bytes only through this
counter.

:class:`HeavySlots` bounds the expensive work per worker (picture decodes, large JSON
parses, batches): past its capacity a request waits briefly, then gets 503 + Retry-After,
so a flood of uploads cannot exhaust memory or starve the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import orjson

from mnist_mlops.serving.problems import HTTPProblem, current_path, problem_body


@dataclass(frozen=True)
class BodyLimit:
    """The most bytes a request may send, and what to tell a client that sends more."""

    max_bytes: int
    advice: str = ""


LimitFor = Callable[[str, str, str], BodyLimit]  # (method, path, media type) -> limit


class _BodyAbort(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class BodyLimitMiddleware:
    """Pure ASGI: enforce the route's body limit while streaming, and a body-read deadline."""

    def __init__(
        self, app, limit_for: LimitFor, read_timeout_s: float, inflight_budget: int
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.read_timeout_s = read_timeout_s
        # body bytes held by all requests in progress in this worker, and the most allowed:
        # per-request limits alone would let many concurrent uploads add up without bound
        self.inflight = 0
        self.inflight_budget = inflight_budget

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        current_path.set(path)
        media = (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
        limit = self.limit_for(scope["method"], path, media)
        declared = _header(scope, b"content-length")
        has_body = _header(scope, b"transfer-encoding") is not None or declared not in (None, "0")
        if declared is not None:
            if not declared.strip().isdigit():
                await _answer(send, 400, f"invalid Content-Length header {declared[:40]!r}", path)
                return
            if int(declared) > limit.max_bytes:
                await _answer(send, 413, _too_large(int(declared), limit), path)
                return

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout_s
        received = 0
        body_done = False
        abort: _BodyAbort | None = None
        started = False

        async def limited_receive():
            nonlocal received, body_done, abort
            if body_done:
                return await receive()
            try:
                # asyncio.timeout_at: a timer handle, not a task per receive (hot path)
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                abort = _BodyAbort(
                    408,
                    f"the request body did not arrive within {self.read_timeout_s:g} s "
                    f"({received} bytes received)",
                )
                raise abort from None
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                received += size
                self.inflight += size
                if received > limit.max_bytes:
                    abort = _BodyAbort(413, _too_large(None, limit))
                    raise abort
                if self.inflight > self.inflight_budget:
                    abort = _BodyAbort(
                        503,
                        f"server busy: {self.inflight_budget} bytes of request bodies are "
                        "already in memory in this worker; retry shortly",
                    )
                    raise abort
                body_done = not message.get("more_body", False)
            else:  # http.disconnect: nothing more will come
                body_done = True
            return message

        async def guarded_send(message) -> None:
            nonlocal started
            if abort is not None and not started:
                return  # the app's own answer to the aborted read is replaced by ours
            if message["type"] == "http.response.start":
                started = True
                if has_body and not body_done:
                    # answered without reading the whole body (e.g. 401, 415): close rather
                    # than let the server read and discard whatever the client still sends
                    headers = [h for h in message.get("headers", []) if h[0] != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyAbort:
            pass
        except Exception:
            if abort is None or started:
                raise
        finally:
            self.inflight -= received
        if abort is not None and not started:
            await _answer(send, abort.status, abort.detail, path)


def _too_large(size: int | None, limit: BodyLimit) -> str:
    what = f"request body of {size} bytes" if size is not None else "request body"
    text = f"{what} exceeds the {limit.max_bytes}-byte limit for this route and Content-Type"
    return f"{text}; {limit.advice}" if limit.advice else text


async def _answer(send, status: int, detail: str, path: str) -> None:
    """A problem response that also closes the connection (the unread body is dropped)."""
    body = orjson.dumps(problem_body(status, detail, path))
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    if status == 503:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class HeavySlots:
    """At most ``capacity`` expensive operations at once in this worker; waiting up to
    ``wait_s`` for a slot, then 503 with Retry-After (the client's cue to back off)."""

    def __init__(self, capacity: int, wait_s: float) -> None:
        self.capacity = capacity
        self.wait_s = wait_s
        self._semaphore: asyncio.Semaphore | None = None

    @contextlib.asynccontextmanager
    async def slot(self, what: str) -> AsyncIterator[None]:
        if self._semaphore is None:  # created on first use, inside the serving event loop
            self._semaphore = asyncio.Semaphore(self.capacity)
        try:
            if self._semaphore.locked():  # (wait_for(..., 0) would fail even a free slot)
                async with asyncio.timeout(self.wait_s):
                    await self._semaphore.acquire()
            else:
                await self._semaphore.acquire()
        except TimeoutError:
            raise HTTPProblem(
                503,
                f"server busy: {self.capacity} {what} already in progress in this worker; "
                "retry shortly",
                headers={"Retry-After": "1"},
            ) from None
        try:
            yield
        finally:
            self._semaphore.release()
