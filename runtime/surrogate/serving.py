"""Text generation for a server: one model, requests answered one at a time, text streamed.

``Generator`` owns a transformers causal LM (surrogates applied or not) and its tokenizer.
Requests from any thread are queued onto a single worker thread that calls ``model.generate``,
so generation never runs twice at once on the model (its surrogate heads keep per-call
state); ``complete`` waits for the whole text, ``stream`` yields text pieces as tokens come.
Stop strings end generation and are cut from the text (held back while streaming until it is
clear they are not the start of a stop string). No HTTP here: ``headcode.server`` is the web
layer over this module.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from headcode.errors import HeadcodeError
from headcode.runtime.surrogate.metrics import Metrics


class RequestError(HeadcodeError):
    """A request that cannot be served as asked (the web layer answers 400)."""


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt's generation settings; ``temperature == 0``: greedy."""

    prompt_ids: tuple[int, ...]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: str          # "stop" (end of text or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


def visible_text(text: str, stops: Sequence[str], final: bool) -> tuple[str, bool]:
    """``(text safe to show, a stop string was hit)``: cut at the first stop string; unless
    ``final``, also hold back a tail that may start a stop string or is an incomplete character."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if hits:
        return text[: min(hits)], True
    if final:
        return text, False
    hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    text = text[: len(text) - hold]
    return text.rstrip("\ufffd"), False


class Overloaded(HeadcodeError):
    """More requests are waiting than the server queues (HTTP 429)."""


class _TokenQueue:
    """A transformers streamer: the prompt is skipped, each new token id goes to ``q`` (``q``
    None: only timed), and the times of the first token and between tokens go to ``metrics``."""

    def __init__(self, metrics: Metrics | None = None, arrived: float | None = None, keep: bool = True) -> None:
        self.q: queue.Queue[int | None] | None = queue.Queue() if keep else None
        self._prompt_seen = False
        self.metrics, self.last, self.n = metrics, arrived, 0

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        toks = value.reshape(-1).tolist()
        if self.metrics is not None and self.last is not None:
            now = time.monotonic()
            with self.metrics.lock:
                (self.metrics.per_token if self.n else self.metrics.ttft).observe(now - self.last)
                self.metrics.tokens += len(toks)
            self.last, self.n = now, self.n + len(toks)
        if self.q is not None:
            for t in toks:
                self.q.put(int(t))

    def end(self) -> None:
        if self.q is not None:
            self.q.put(None)


class _StopCriteria:
    """Stops on a stop string in the decoded continuation, or when the request was cancelled."""

    def __init__(self, tokenizer: Any, n_prompt: int, stops: Sequence[str], cancel: threading.Event):
        self.tokenizer, self.n_prompt, self.stops, self.cancel = tokenizer, n_prompt, stops, cancel

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kw: Any) -> torch.Tensor:
        done = self.cancel.is_set()
        if not done and self.stops:
            text = self.tokenizer.decode(input_ids[0, self.n_prompt:], skip_special_tokens=True)
            done = any(s in text for s in self.stops)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class Generator:
    """Serialised ``generate`` on one model. ``max_context``: prompt + completion tokens allowed."""

    def __init__(self, model: Any, tokenizer: Any, chat_template: str | None = None,
                 max_context: int | None = None, max_queue: int = 64):
        self.model, self.tokenizer = model, tokenizer
        self.max_queue = max_queue       # requests waiting or running past this: Overloaded (429)
        self.metrics = Metrics()
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
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.eos_ids, default=0))
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headcode-generate")

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
    def _run(self, req: GenerationRequest, streamer: _TokenQueue | None, cancel: threading.Event) -> list[int]:
        from transformers import GenerationConfig, StoppingCriteriaList

        if req.seed is not None:
            torch.manual_seed(req.seed)
        sample = req.temperature > 0
        # the model's own config (its cache implementation, ...) with this request's settings over it
        base = getattr(self.model, "generation_config", None)
        cfg = copy.deepcopy(base) if base is not None else GenerationConfig()
        cfg.update(max_new_tokens=req.max_tokens, max_length=None, min_new_tokens=None, min_length=0,
                   do_sample=sample, num_beams=1, num_return_sequences=1, pad_token_id=self.pad_id,
                   eos_token_id=sorted(self.eos_ids) or None, temperature=req.temperature if sample else None,
                   top_p=req.top_p if sample else None, top_k=0 if sample else None,
                   repetition_penalty=None)
        device = next(self.model.parameters()).device
        ids = torch.tensor([req.prompt_ids], dtype=torch.long, device=device)
        stopping = StoppingCriteriaList([_StopCriteria(self.tokenizer, ids.shape[1], req.stop, cancel)])
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg,
                                      stopping_criteria=stopping, streamer=streamer)
        return out[0, ids.shape[1]:].tolist()

    def finish(self, req: GenerationRequest, new_ids: list[int]) -> GenerationResult:
        """The result of ``req`` from its generated token ids (stop strings cut, finish reason)."""
        text, stopped = visible_text(self.tokenizer.decode(new_ids, skip_special_tokens=True), req.stop, True)
        ended = stopped or bool(new_ids and new_ids[-1] in self.eos_ids) or len(new_ids) < req.max_tokens
        return GenerationResult(text, "stop" if ended else "length", len(req.prompt_ids), len(new_ids))

    def _admit(self, req: GenerationRequest, streamer: _TokenQueue, cancel: threading.Event) -> Future:
        """Queue ``req`` unless ``max_queue`` requests are already waiting or running (``Overloaded``)."""
        self.check(req)
        m = self.metrics
        with m.lock:
            if m.queued + m.running >= self.max_queue:
                m.requests["rejected"] += 1
                raise Overloaded(f"{m.queued + m.running} requests are already waiting or running, as many as "
                                 f"this server queues ({self.max_queue}): retry later")
            m.queued += 1

        def run() -> list[int]:
            with m.lock:
                m.queued, m.running = m.queued - 1, m.running + 1
            try:
                out = self._run(req, streamer, cancel)
            except BaseException:
                with m.lock:
                    m.requests["failed"] += 1
                raise
            else:
                with m.lock:
                    m.requests["ok"] += 1
                return out
            finally:
                with m.lock:
                    m.running -= 1

        return self._worker.submit(run)

    def submit(self, req: GenerationRequest) -> Future:
        """A future of the new token ids (queued behind the requests before it); ``Overloaded``
        when the queue is full, ``RequestError`` when the request cannot fit the context."""
        return self._admit(req, _TokenQueue(self.metrics, time.monotonic(), keep=False), threading.Event())

    def complete(self, req: GenerationRequest) -> GenerationResult:
        return self.finish(req, self.submit(req).result())

    def stream(self, req: GenerationRequest) -> Iterator[str | GenerationResult]:
        """Text pieces as they are generated, then the ``GenerationResult``. Admission (context,
        queue) is decided here, before the first piece is asked for, so a server can answer 400
        or 429 before it starts a stream. Closing the iterator early (a client that went away)
        stops its generation at the next token."""
        streamer, cancel = _TokenQueue(self.metrics, time.monotonic()), threading.Event()
        fut = self._admit(req, streamer, cancel)
        fut.add_done_callback(lambda f: streamer.end() if f.exception() is not None else None)
        return self._pieces(req, streamer, cancel, fut)

    def _pieces(self, req: GenerationRequest, streamer: _TokenQueue, cancel: threading.Event,
                fut: Future) -> Iterator[str | GenerationResult]:
        ids: list[int] = []
        sent = ""
        try:
            while (tok := streamer.q.get()) is not None:
                ids.append(tok)
                text, _ = visible_text(self.tokenizer.decode(ids, skip_special_tokens=True), req.stop, False)
                if len(text) > len(sent) and text.startswith(sent):
                    yield text[len(sent):]
                    sent = text
            result = self.finish(req, fut.result())
            if result.text.startswith(sent) and len(result.text) > len(sent):
                yield result.text[len(sent):]
            yield result
        finally:
            cancel.set()

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
