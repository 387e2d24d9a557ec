"""The ASGI app (Starlette): OpenAI routes over one Engine, plus /v1/models, /health and /metrics.

    app = create_app(engine, ServedModel(model, "my-hoe"))     # the engine starts and stops with the app
    uvicorn.run(app, host="127.0.0.1", port=8000)

Every request is answered: bad input -> 400, queue full -> 429 + Retry-After, engine down -> 503 +
Retry-After, anything unexpected -> 500; all in OpenAI's error JSON. A client that goes away (stream or
not) cancels its request, which frees its batch row at the next decode step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from hoe.core.errors import HoEError
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import protocol
from .engine import Engine, EngineStopped, QueueFull
from .protocol import ApiError, ServedModel

log = logging.getLogger(__name__)

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DISCONNECT_POLL_S = 0.25


class Api:
    """Route handlers over one engine; also called directly by the Ray Serve deployment."""

    def __init__(self, engine: Engine, served: ServedModel, extra: dict | None = None) -> None:
        self.engine, self.served, self.metrics = engine, served, engine.metrics
        self.extra = extra or {}  # added to every response's `hoe` extension (e.g. the Ray replica)

    # -- routes ---------------------------------------------------------------------------------------
    async def chat_completions(self, request: HttpRequest) -> Response:
        return await self._complete(request, "chat", "/v1/chat/completions")

    async def completions(self, request: HttpRequest) -> Response:
        return await self._complete(request, "completion", "/v1/completions")

    async def models(self, request: HttpRequest) -> Response:
        return self._json("/v1/models", {"object": "list", "data": [self.served.card()]})

    async def model(self, request: HttpRequest) -> Response:
        name = request.path_params.get("name") or request.url.path.split("/v1/models/", 1)[-1]
        if name != self.served.name:
            return self._error("/v1/models/{id}", ApiError(404, f"unknown model {name!r}; this server serves "
                                                               f"{[self.served.name]}", code="model_not_found"))
        return self._json("/v1/models/{id}", self.served.card())

    async def health(self, request: HttpRequest) -> Response:
        ok = self.engine.running
        return self._json("/health", {"status": "ok" if ok else "stopped", **self.engine.load()}, 200 if ok else 503)

    async def metrics_text(self, request: HttpRequest) -> Response:
        self.metrics.requests.labels("/metrics", "200").inc()
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    async def dispatch(self, request: HttpRequest) -> Response:
        """Route by path and method (for hosts that hand over plain Starlette requests: Ray Serve)."""
        routes = {("POST", "/v1/chat/completions"): self.chat_completions,
                  ("POST", "/v1/completions"): self.completions, ("GET", "/v1/models"): self.models,
                  ("GET", "/health"): self.health, ("GET", "/metrics"): self.metrics_text}
        path = request.url.path.rstrip("/") or "/"
        handler = routes.get((request.method, path))
        if handler is None and request.method == "GET" and path.startswith("/v1/models/"):
            handler = self.model
        if handler is None:
            return self._error(request.url.path, ApiError(404, f"no route {request.method} {request.url.path}; "
                                                          f"expected one of {sorted(p for _, p in routes)}",
                                                          code="not_found"))
        return await handler(request)

    # -- completions ------------------------------------------------------------------------------------
    async def _complete(self, request: HttpRequest, kind: str, endpoint: str) -> Response:
        try:
            parsed = protocol.parse(kind, await _read_json(request), self.served)
            events, handle = self._submit(parsed)
        except ApiError as e:
            return self._error(endpoint, e)
        if parsed.stream:
            self.metrics.requests.labels(endpoint, "200").inc()
            return StreamingResponse(self._sse(parsed, events, handle), media_type="text/event-stream",
                                     headers=_SSE_HEADERS)
        try:
            result = await self._collect(request, events, handle)
        except ApiError as e:
            return self._error(endpoint, e)
        if result is None:  # the client left
            return self._json(endpoint, {}, 499)
        body = protocol.response(parsed, result, self.served)
        body["hoe"].update(self.extra)
        return self._json(endpoint, body)

    def _submit(self, parsed):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        try:
            handle = self.engine.submit(parsed.request, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
        except QueueFull as e:
            retry = str(self.engine.config.retry_after_s)
            raise ApiError(429, f"server busy: {e}; retry after {retry} s", code="rate_limit_exceeded",
                           type_="rate_limit_error", headers={"Retry-After": retry}) from e
        except EngineStopped as e:
            raise ApiError(503, f"{e}; retry later", code="unavailable", type_="server_error",
                           headers={"Retry-After": str(self.engine.config.retry_after_s)}) from e
        return events, handle

    async def _collect(self, request: HttpRequest, events: asyncio.Queue, handle):
        """Wait for the result; None when the client disconnected first (its request is then cancelled)."""
        while True:
            try:
                ev = await asyncio.wait_for(events.get(), _DISCONNECT_POLL_S)
            except TimeoutError:
                if await request.is_disconnected():
                    handle.cancel()
                    return None
                continue
            if ev.kind == "done":
                return ev.result
            if ev.kind == "error":
                raise _engine_error(ev.error)

    async def _sse(self, parsed, events: asyncio.Queue, handle):
        """Server-sent events as OpenAI streams them: role chunk, text chunks, a final chunk with
        finish_reason (+ a usage chunk when asked), then `data: [DONE]`."""
        try:
            if parsed.kind == "chat":
                yield _data(protocol.chunk(parsed, self.served, role=True))
            while True:
                ev = await events.get()
                if ev.kind == "token":
                    yield _data(protocol.chunk(parsed, self.served, piece=ev.piece))
                    continue
                if ev.kind == "error":
                    yield _data(_engine_error(ev.error).body())
                    break
                ext = dict(protocol.extension(ev.result, self.served.model), **self.extra)
                yield _data(protocol.chunk(parsed, self.served, finish_reason=ev.result.finish_reason,
                                           extra={"hoe": ext}))
                if parsed.include_usage:
                    yield _data(protocol.chunk(parsed, self.served, choices=False,
                                               extra={"usage": protocol.usage(ev.result)}))
                break
            yield "data: [DONE]\n\n"
        finally:  # normal end, or the client went away (the generator is closed or cancelled)
            handle.cancel()

    # -- helpers ----------------------------------------------------------------------------------------
    def _json(self, endpoint: str, body: dict, status: int = 200, headers: dict | None = None) -> Response:
        self.metrics.requests.labels(endpoint, str(status)).inc()
        return JSONResponse(body, status_code=status, headers=headers)

    def _error(self, endpoint: str, e: ApiError) -> Response:
        if e.status >= 500 or e.status == 429:
            log.warning("%s -> %d: %s", endpoint, e.status, e.message)
        return self._json(endpoint, e.body(), e.status, e.headers)


async def _read_json(request: HttpRequest):
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body must be JSON: {e} (got {raw[:80]!r})", code="invalid_json") from e


def _engine_error(e: Exception) -> ApiError:
    if isinstance(e, EngineStopped):
        return ApiError(503, str(e), code="unavailable", type_="server_error", headers={"Retry-After": "1"})
    if isinstance(e, HoEError):
        return ApiError(400, str(e))
    return ApiError(500, f"internal error: {type(e).__name__}: {e}", type_="server_error")


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def create_app(engine: Engine, served: ServedModel, extra: dict | None = None) -> Starlette:
    api = Api(engine, served, extra)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)

    async def on_error(request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        return api._error(request.url.path, ApiError(500, f"internal error: {type(exc).__name__}",
                                                     type_="server_error"))

    async def not_found(request, exc) -> Response:
        return await api.dispatch(request)

    routes = [Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
              Route("/v1/completions", api.completions, methods=["POST"]),
              Route("/v1/models", api.models, methods=["GET"]),
              Route("/v1/models/{name:path}", api.model, methods=["GET"]),
              Route("/health", api.health, methods=["GET"]),
              Route("/metrics", api.metrics_text, methods=["GET"])]
    handlers = {Exception: on_error, 404: not_found, 405: not_found}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.state.api = api
    return app
