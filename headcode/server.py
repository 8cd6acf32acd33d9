"""An OpenAI-compatible HTTP server (FastAPI + uvicorn) over ``runtime.surrogate.serving.Generator``.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both stream as
server-sent events with ``"stream": true``), ``GET /v1/models`` (the served model, with the
surrogate plan it runs: file, heads replaced), ``GET /health``. A bad request gets a 4xx with
an OpenAI-style error body (``{"error": {"message", "type", ...}}``) and the server goes on;
requests arriving together are queued and answered one after another by the generator.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from headcode.errors import HeadcodeError
from headcode.runtime.surrogate.serving import (
    GenerationRequest,
    GenerationResult,
    Generator,
    Overloaded,
    RequestError,
)
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


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                        status_code=status)


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


class _Handlers:
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
        return GenerationRequest(ids, n, body.temperature, body.top_p, body.stops(), body.seed)

    def completions(self, body: CompletionRequest) -> Any:
        body.check()
        reqs = [self._request(body, self.gen.encode(p), body.max_tokens, 16) for p in body.prompts()]
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.served.id}
        if body.stream:
            return self._stream(reqs[0], head, body.include_usage(), chat=False)
        futures = [self.gen.submit(r) for r in reqs]
        results = [self.gen.finish(r, f.result()) for r, f in zip(reqs, futures)]
        choices = [{"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
                   for i, r in enumerate(results)]
        return {**head, "choices": choices, "usage": _usage(results)}

    def chat(self, body: ChatRequest) -> Any:
        body.check()
        ids = self.gen.encode_chat(body.conversation())
        req = self._request(body, ids, body.max_completion_tokens or body.max_tokens, 256)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.served.id}
        if body.stream:
            return self._stream(req, {**head, "object": "chat.completion.chunk"}, body.include_usage(), chat=True)
        r = self.gen.complete(req)
        choice = {"index": 0, "message": {"role": "assistant", "content": r.text},
                  "finish_reason": r.finish_reason, "logprobs": None}
        return {**head, "object": "chat.completion", "choices": [choice], "usage": _usage([r])}

    def _stream(self, req: GenerationRequest, head: dict, usage: bool, chat: bool) -> StreamingResponse:
        def piece(text: str | None, finish: str | None) -> dict:
            if chat:
                delta = {} if text is None else {"content": text}
                return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}

        pieces = self.gen.stream(req)  # admitted before the 200: too long is a 400, a full queue a 429

        def events() -> Iterator[str]:
            if chat:
                yield _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                  "finish_reason": None, "logprobs": None}]})
            try:
                for item in pieces:
                    if isinstance(item, str):
                        yield _sse({**head, "choices": [piece(item, None)]})
                    else:
                        yield _sse({**head, "choices": [piece(None, item.finish_reason)]})
                        if usage:
                            yield _sse({**head, "choices": [], "usage": _usage([item])})
            except Exception as e:  # noqa: BLE001 - the 200 is sent: the error goes in the stream, as OpenAI does
                yield _sse({"error": {"message": f"generation failed: {type(e).__name__}: {e}"[:500],
                                      "type": "server_error", "param": None, "code": None}})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


def build_app(gen: Generator, served: ServedModel) -> FastAPI:
    """The FastAPI application serving ``gen`` under the model id ``served.id``."""
    app = FastAPI(title="headcode", docs_url=None, redoc_url=None)
    h = _Handlers(gen, served)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, _validation_message(exc))

    @app.exception_handler(RequestError)
    async def _refused(_: Request, exc: RequestError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(UnknownModel)
    async def _unknown(_: Request, exc: UnknownModel) -> JSONResponse:
        return _error(404, str(exc), "not_found_error", "model")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), "not_found_error" if exc.status_code == 404 else
                      "invalid_request_error")

    @app.exception_handler(Overloaded)
    async def _overloaded(_: Request, exc: Overloaded) -> JSONResponse:
        return _error(429, str(exc), "rate_limit_error")

    @app.exception_handler(Exception)
    async def _failed(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error")

    @app.post("/v1/completions")
    def completions(body: CompletionRequest) -> Any:
        return h.completions(body)

    @app.post("/v1/chat/completions")
    def chat(body: ChatRequest) -> Any:
        return h.chat(body)

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [served.card()]}

    @app.get("/v1/models/{model_id:path}")
    def model(model_id: str) -> dict:
        if model_id != served.id:
            raise UnknownModel(f"the model {model_id!r} is not served here: this server serves {served.id!r}")
        return served.card()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": served.id}

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        """Prometheus text: requests by outcome, tokens, queue length, running, TTFT and per-token latency."""
        m = getattr(gen, "metrics", None)
        return PlainTextResponse(m.text() if m is not None else "", media_type="text/plain; version=0.0.4")

    return app


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket (``port`` 0: any free port); ``HeadcodeError`` when it cannot be had."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(128)
    except OSError as e:
        raise HeadcodeError(f"cannot listen on {host}:{port} ({e.strerror or e}): choose another --port "
                            "or --host") from e
    return sock


def run_server(app: FastAPI, sock: socket.socket, log_level: str = "warning") -> None:
    """Serve ``app`` on ``sock`` until interrupted (uvicorn)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=2))
    server.run(sockets=[sock])
