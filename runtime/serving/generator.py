"""Text in, text out over the batching engine: prompts encoded (plain or through the chat
template) and checked against the context, tokens decoded into the text a client may see so far
(stop strings cut, held back while they may still be starting), results with their finish reason.
``submit`` hands a request to the engine with the caller's sink; ``complete`` and ``stream`` are
the blocking forms (tests, benchmarks). No HTTP here: ``headcode.server`` is the web layer.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from transformers.cache_utils import Cache

from headcode.runtime.serving.engine import BatchEngine, EngineSettings
from headcode.runtime.serving.metrics import ServeMetrics
from headcode.runtime.serving.requests import (
    Event,
    GenerationRequest,
    GenerationResult,
    RequestError,
    Ticket,
    visible_text,
)


class GenerationFailed(RequestError):
    """The engine ended a request with an error (``status``: 500, 503 when shutting down, 504 on timeout)."""

    def __init__(self, message: str, status: int = 500):
        super().__init__(message)
        self.status = status


class TextStream:
    """The text of one request as its tokens come: ``feed(token)`` -> the new visible piece;
    ``final(finish)`` -> the rest and the ``GenerationResult``."""

    def __init__(self, tokenizer: Any, req: GenerationRequest):
        self.tokenizer, self.req = tokenizer, req
        self.ids: list[int] = []
        self.sent = ""

    def _piece(self, text: str) -> str:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            piece, self.sent = text[len(self.sent):], text
            return piece
        return ""

    def feed(self, token: int) -> str:
        self.ids.append(token)
        text, _ = visible_text(self.tokenizer.decode(self.ids, skip_special_tokens=True), self.req.stop, False)
        return self._piece(text)

    def final(self, finish: str) -> tuple[str, GenerationResult]:
        text, stopped = visible_text(self.tokenizer.decode(self.ids, skip_special_tokens=True), self.req.stop, True)
        reason = "stop" if stopped or finish == "stop" else "length"
        return self._piece(text), GenerationResult(text, reason, len(self.req.prompt_ids), len(self.ids))


class Generator:
    """Prompts and text over a ``BatchEngine`` on ``model``. ``new_cache``: an empty cache for one
    prefill; ``max_context``: prompt + completion tokens allowed."""

    def __init__(self, model: Any, tokenizer: Any, new_cache: Callable[[], Cache], chat_template: str | None = None,
                 max_context: int | None = None, settings: EngineSettings | None = None,
                 metrics: ServeMetrics | None = None):
        self.model, self.tokenizer = model, tokenizer
        if chat_template is not None:
            tokenizer.chat_template = chat_template
        cfg = model.config
        self.max_context = max_context or getattr(cfg, "max_position_embeddings", None) \
            or getattr(cfg, "n_positions", None) or 2048
        gen = getattr(model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None)
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            self.eos_ids.add(int(tokenizer.eos_token_id))
        self.engine = BatchEngine(model, lambda ids: tokenizer.decode(ids, skip_special_tokens=True), self.eos_ids,
                                  new_cache, settings or EngineSettings(), metrics)

    # prompts ------------------------------------------------------------------------------
    def encode(self, text: str) -> tuple[int, ...]:
        ids = list(self.tokenizer(text)["input_ids"])
        if not ids and self.tokenizer.bos_token_id is not None:
            ids = [int(self.tokenizer.bos_token_id)]
        if not ids:
            raise RequestError("the prompt is empty and the model has no start token: send some text")
        return tuple(int(i) for i in ids)

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> tuple[int, ...]:
        """The conversation through the tokenizer's chat template, with the assistant's turn opened."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise RequestError("this model's tokenizer has no chat template: use /v1/completions, or start "
                               "the server with --chat-template FILE")
        try:
            text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - a template may raise anything (jinja's raise_exception)
            raise RequestError(f"the chat template refused these messages: {e}") from e
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return tuple(int(i) for i in ids)

    def check(self, req: GenerationRequest) -> None:
        n = len(req.prompt_ids)
        if n + req.max_tokens > self.max_context:
            raise RequestError(f"the prompt has {n} tokens and max_tokens is {req.max_tokens}: together more "
                               f"than the model's context of {self.max_context} tokens; shorten the prompt "
                               "or ask for fewer tokens")

    # generation ---------------------------------------------------------------------------
    def start(self) -> None:
        self.engine.start()

    def submit(self, req: GenerationRequest, sink: Callable[[Event], None]) -> Ticket:
        """Check ``req`` and queue it (``RequestError`` 400, ``Overloaded`` 429, ``ShuttingDown`` 503)."""
        self.check(req)
        ticket = Ticket(req, sink)
        self.engine.submit(ticket)
        return ticket

    def stream(self, req: GenerationRequest) -> Iterator[str | GenerationResult]:
        """Blocking: text pieces as they are generated, then the ``GenerationResult``; closing the
        iterator early cancels the request."""
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        ticket = self.submit(req, events.put)
        text = TextStream(self.tokenizer, req)
        try:
            while (ev := events.get()).kind == "token":
                if piece := text.feed(int(ev.token or 0)):
                    yield piece
            if ev.kind == "error":
                raise GenerationFailed(ev.message or "generation failed", ev.status)
            rest, result = text.final(ev.finish or "length")
            if rest:
                yield rest
            yield result
        finally:
            ticket.cancel()

    def complete(self, req: GenerationRequest) -> GenerationResult:
        *_, result = self.stream(req)
        assert isinstance(result, GenerationResult)
        return result

    def drain(self, timeout: float) -> None:
        self.engine.drain(timeout)

