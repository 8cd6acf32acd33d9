"""Serve a model, with a surrogate plan in place or not, over an OpenAI-compatible HTTP API.

``create_app(settings)`` builds the whole application from settings (the model and plan loaded,
the batching engine, the routes): what a process or a replica (Ray Serve) deploys.
``start_server`` binds the port first (a busy port fails in a second, not after the model loads),
then builds the app; ``Server.run()`` answers requests until interrupted, then drains."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headcode.errors import HeadcodeError
from headcode.runtime.model.loading import DEFAULT_MODEL


@dataclass(frozen=True)
class ServeSettings:
    model: str = DEFAULT_MODEL
    surrogates: Path | None = None            # a plan file; None: the base model
    heads: tuple[str, ...] | None = None      # keep only these heads of the plan (L3.H7 names)
    host: str = "127.0.0.1"
    port: int = 8000                          # 0: any free port
    name: str | None = None                   # the model id clients use (default MODEL+PLAN, or MODEL)
    chat_template: Path | None = None         # a Jinja chat template for tokenizers without one
    max_tokens: int = 1024                    # the most tokens one request may generate
    max_queue: int = 64                       # requests running or waiting past this get HTTP 429
    backend: str = "numba"
    log_level: str = "warning"
    max_batch: int = 16                       # requests decoded together (backends but numba: 1)
    request_timeout: float | None = 600.0     # seconds from arrival to the last token; then an error (504)
    drain_timeout: float = 30.0               # on shutdown: seconds the accepted requests may still run


@dataclass(frozen=True, eq=False)
class Server:
    app: Any                                  # the FastAPI app (``create_app``)
    socket: Any
    url: str                                  # http://HOST:PORT/v1
    settings: ServeSettings

    @property
    def served(self) -> Any:
        """``headcode.server.ServedModel``: what /v1/models says."""
        return self.app.state.served

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.app.state.generator.tokenizer, "chat_template", None))

    def run(self) -> None:
        """Answer requests until interrupted; the accepted ones finish (or end with an error) first."""
        from headcode.server import run_server

        run_server(self.app, self.socket, self.settings.log_level, self.settings.drain_timeout)


def _read(path: Path, what: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        raise HeadcodeError(f"cannot read the {what} {path} ({e.strerror or e})") from e


def check_settings(s: ServeSettings) -> None:
    """Every bad setting, before anything loads."""
    if s.max_queue < 1:
        raise HeadcodeError(f"--max-queue {s.max_queue}: give a positive number of requests")
    if s.max_tokens < 1:
        raise HeadcodeError(f"--max-tokens {s.max_tokens}: give a positive number of tokens")
    if s.max_batch < 1:
        raise HeadcodeError(f"--max-batch {s.max_batch}: give at least one row")
    if s.heads and not s.surrogates:
        raise HeadcodeError("--heads picks heads of a plan: give --surrogates FILE too")


def create_app(s: ServeSettings) -> Any:
    """The FastAPI app for ``s``: the model and plan loaded, the engine ready to start with the app."""
    from transformers import DynamicCache

    from headcode.api import load_surrogate_model
    from headcode.runtime.serving.engine import EngineSettings
    from headcode.runtime.serving.generator import Generator
    from headcode.server import ServedModel, build_app

    check_settings(s)
    template = _read(s.chat_template, "chat template") if s.chat_template else None
    lm, handle = load_surrogate_model(s.model, s.surrogates, heads=s.heads, backend=s.backend)
    replaced = tuple(str(h) for h in handle.heads) if handle is not None else ()
    name = lm.name if "/" not in lm.name else Path(lm.name).name
    served = ServedModel(id=s.name or (f"{name}+{Path(s.surrogates).stem}" if s.surrogates else name),
                         base_model=lm.name, plan=str(s.surrogates) if s.surrogates else None, heads=replaced,
                         total_heads=lm.n_layers * lm.n_heads, max_tokens=s.max_tokens)
    config = lm.model.config
    new_cache = handle.new_cache if handle is not None else (lambda: DynamicCache(config=config))
    # rows join a batch with their numba selector states; other backends' states do not join yet
    rows = s.max_batch if handle is None or s.backend == "numba" else 1
    engine = EngineSettings(max_batch=rows, max_queue=s.max_queue, request_timeout=s.request_timeout)
    gen = Generator(lm.model, lm.tokenizer, new_cache, chat_template=template, settings=engine)
    return build_app(gen, served, s.drain_timeout)


def start_server(s: ServeSettings) -> Server:
    """A server ready to ``run()``: the socket bound, the app built (``create_app``)."""
    from headcode.server import listen

    check_settings(s)
    sock = listen(s.host, s.port)
    try:
        app = create_app(s)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return Server(app, sock, f"http://{host}:{port}/v1", s)
