"""An OpenAI-compatible HTTP server (FastAPI + uvicorn) over ``runtime.serving.generator.Generator``.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both stream as server-sent
events with ``"stream": true``), ``GET /v1/models`` (the served model, with the surrogate plan it
runs), ``GET /health`` (503 while draining), ``GET /metrics`` (Prometheus text). Requests run
together in the engine's batch (continuous batching). Every refusal comes before any output, as an
OpenAI-style error body (``{"error": {"message", "type", ...}}``): 400 bad request or too long for
the context, 404 unknown model, 429 queue full, 503 shutting down. An error after a stream began
(a timeout, a failed step) is one ``data: {"error": ...}`` event, then ``data: [DONE]``. A client
that goes away cancels its request: its row leaves the batch at the next step.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from headcode.errors import HeadcodeError
from headcode.runtime.serving.generator import GenerationFailed, Generator, TextStream
from headcode.runtime.serving.metrics import CONTENT_TYPE
from headcode.runtime.serving.requests import Event, GenerationRequest, GenerationResult, RequestError, Ticket
from headcode.server_schema import ChatRequest, CompletionRequest


@dataclass(frozen=True)
class ServedModel:
    """What ``/v1/models`` says: the id clients name, and the plan in place."""

    id: str
    base_model: str
    plan: str | None = None
    heads: tuple[str, ...] = ()
    total_heads: int = 0
    max_tokens: int = 1024                       # the most a request may ask for
    created: int = field(default_factory=lambda: int(time.time()))

    def card(self) -> dict[str, Any]:
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": "headcode",
                "headcode": {"base_model": self.base_model, "surrogates": self.plan,
                             "heads_replaced": list(self.heads), "total_heads": self.total_heads}}


_KIND = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error", 503: "server_error",
         504: "timeout_error"}


def _error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _KIND.get(status, "server_error"), "param": param,
                      "code": status}}


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(_error_body(status, message, param), status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts[:5])


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _usage(results: list[GenerationResult]) -> dict[str, int]:
    p, c = sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


class UnknownModel(HeadcodeError):
    """A request names a model this server does not serve (404)."""


class ClientGone(HeadcodeError):
    """The client closed the connection before its answer was ready."""


def _sink(queue: asyncio.Queue[Event]) -> Callable[[Event], None]:
    """Events from the engine thread into this event loop's queue."""
    loop = asyncio.get_running_loop()
    return lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev)


class _Handlers:
    POLL = 0.25  # seconds between checks that a waiting (non-streaming) client is still there

    def __init__(self, gen: Generator, served: ServedModel):
        self.gen, self.served = gen, served

    def _request(self, body: CompletionRequest | ChatRequest, ids: tuple[int, ...], max_tokens: int | None,
                 default: int) -> GenerationRequest:
        if body.model != self.served.id:
            raise UnknownModel(f"the model {body.model!r} is not served here: this server serves "
                               f"{self.served.id!r} (see /v1/models)")
        n = default if max_tokens is None else max_tokens
        if n > self.served.max_tokens:
            raise RequestError(f"max_tokens {n} is more than this server allows ({self.served.max_tokens}); "
                               "ask for fewer, or restart it with a larger --max-tokens")
        req = GenerationRequest(ids, n, body.temperature, body.top_p, body.stops(), body.seed)
        self.gen.check(req)
        return req

    async def _result(self, req: GenerationRequest, queue: asyncio.Queue[Event], http: Request) -> GenerationResult:
        text = TextStream(self.gen.tokenizer, req)
        while True:
            try:
                ev = await asyncio.wait_for(queue.get(), self.POLL)
            except asyncio.TimeoutError:
                if await http.is_disconnected():
                    raise ClientGone("the client went away") from None
                continue
            if ev.kind == "token":
                text.feed(int(ev.token or 0))
            elif ev.kind == "error":
                raise GenerationFailed(ev.message or "generation failed", ev.status)
            else:
                return text.final(ev.finish or "length")[1]

    async def results(self, reqs: list[GenerationRequest], http: Request) -> list[GenerationResult]:
        """Every request queued at once (all or none: a refusal cancels those queued), then awaited."""
        queues: list[asyncio.Queue[Event]] = [asyncio.Queue() for _ in reqs]
        tickets: list[Ticket] = []
        try:
            for r, q in zip(reqs, queues):
                tickets.append(self.gen.submit(r, _sink(q)))
            return [await self._result(r, q, http) for r, q in zip(reqs, queues)]
        finally:
            for t in tickets:
                t.cancel()

    async def completions(self, body: CompletionRequest, http: Request) -> Any:
        body.check()
        reqs = [self._request(body, self.gen.encode(p), body.max_tokens, 16) for p in body.prompts()]
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.served.id}
        if body.stream:
            return self._stream(reqs[0], head, body.include_usage(), chat=False)
        results = await self.results(reqs, http)
        choices = [{"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
                   for i, r in enumerate(results)]
        return {**head, "choices": choices, "usage": _usage(results)}

    async def chat(self, body: ChatRequest, http: Request) -> Any:
        body.check()
        ids = self.gen.encode_chat(body.conversation())
        req = self._request(body, ids, body.max_completion_tokens or body.max_tokens, 256)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.served.id}
        if body.stream:
            return self._stream(req, {**head, "object": "chat.completion.chunk"}, body.include_usage(), chat=True)
        (r,) = await self.results([req], http)
        choice = {"index": 0, "message": {"role": "assistant", "content": r.text},
                  "finish_reason": r.finish_reason, "logprobs": None}
        return {**head, "object": "chat.completion", "choices": [choice], "usage": _usage([r])}

    def _stream(self, req: GenerationRequest, head: dict, usage: bool, chat: bool) -> StreamingResponse:
        """Queued now (a refusal is a 4xx/5xx before any 200); the events follow as tokens come."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        ticket = self.gen.submit(req, _sink(queue))

        def chunk(text: str | None, finish: str | None) -> str:
            if chat:
                delta = {} if text is None else {"content": text}
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            return _sse({**head, "choices": [choice]})

        async def events() -> AsyncIterator[str]:
            text = TextStream(self.gen.tokenizer, req)
            try:
                if chat:
                    yield _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                      "finish_reason": None, "logprobs": None}]})
                while (ev := await queue.get()).kind == "token":
                    if piece := text.feed(int(ev.token or 0)):
                        yield chunk(piece, None)
                if ev.kind == "error":
                    yield _sse(_error_body(ev.status, ev.message or "generation failed"))
                else:
                    rest, result = text.final(ev.finish or "length")
                    if rest:
                        yield chunk(rest, None)
                    yield chunk(None, result.finish_reason)
                    if usage:
                        yield _sse({**head, "choices": [], "usage": _usage([result])})
            except Exception as e:  # noqa: BLE001 - whatever breaks after the 200 ends the stream with an error event
                yield _sse(_error_body(500, f"generation failed: {type(e).__name__}: {e}"))
            finally:
                ticket.cancel()  # a client that went away (the task is cancelled here) frees its row
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, _validation_message(exc))

    @app.exception_handler(RequestError)
    async def _refused(_: Request, exc: RequestError) -> JSONResponse:
        return _error(getattr(exc, "status", 400), str(exc))

    @app.exception_handler(UnknownModel)
    async def _unknown(_: Request, exc: UnknownModel) -> JSONResponse:
        return _error(404, str(exc), "model")

    @app.exception_handler(ClientGone)
    async def _gone(_: Request, exc: ClientGone) -> JSONResponse:
        return _error(499, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _failed(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"generation failed: {type(exc).__name__}: {exc}")


def build_app(gen: Generator, served: ServedModel, drain_timeout: float = 30.0) -> FastAPI:
    """The FastAPI application serving ``gen`` under the model id ``served.id``; the engine runs
    while the app does (lifespan) and drains for up to ``drain_timeout`` seconds when it stops."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        gen.start()
        yield
        await asyncio.to_thread(gen.drain, drain_timeout)

    app = FastAPI(title="headcode", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.generator, app.state.served = gen, served
    h = _Handlers(gen, served)
    _install_errors(app)
    engine = gen.engine

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        return await h.completions(body, request)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> Any:
        return await h.chat(body, request)

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [served.card()]}

    @app.get("/v1/models/{model_id:path}")
    def model(model_id: str) -> dict:
        if model_id != served.id:
            raise UnknownModel(f"the model {model_id!r} is not served here: this server serves {served.id!r}")
        return served.card()

    @app.get("/health")
    def health() -> JSONResponse:
        body = {"status": "draining" if engine.draining else "ok", "model": served.id,
                "running": engine.running, "waiting": engine.waiting}
        return JSONResponse(body, status_code=503 if engine.draining else 200)

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus text (``runtime.serving.metrics``)."""
        return Response(engine.metrics.text(), media_type=CONTENT_TYPE)

    return app


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket (``port`` 0: any free port); ``HeadcodeError`` when it cannot be had."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(1024)
    except OSError as e:
        raise HeadcodeError(f"cannot listen on {host}:{port} ({e.strerror or e}): choose another --port "
                            "or --host") from e
    return sock


def run_server(app: FastAPI, sock: socket.socket, log_level: str = "warning", drain_timeout: float = 30.0) -> None:
    """Serve ``app`` on ``sock`` until interrupted (uvicorn). On SIGINT/SIGTERM the engine stops
    taking requests at once (503) while the accepted ones finish (up to ``drain_timeout`` s)."""
    import uvicorn

    gen: Generator = app.state.generator

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            gen.engine.begin_drain(drain_timeout)
            super().handle_exit(sig, frame)

    server = _Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=int(drain_timeout) + 5))
    server.run(sockets=[sock])
