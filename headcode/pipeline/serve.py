"""Serve a model, with a surrogate plan in place or not, over an OpenAI-compatible HTTP API:
``start_server`` binds the port first (a busy port fails in a second, not after the model
loads), then loads the model and the plan; ``Server.run()`` answers requests until interrupted."""

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
    max_queue: int = 64                       # requests waiting or running past this get HTTP 429
    backend: str = "numba"
    log_level: str = "warning"


@dataclass(frozen=True, eq=False)
class Server:
    served: Any                               # headcode.server.ServedModel: what /v1/models says
    url: str                                  # http://HOST:PORT/v1
    has_chat_template: bool
    app: Any
    socket: Any
    generator: Any
    log_level: str = "warning"

    def run(self) -> None:
        """Answer requests until interrupted; then release the model's worker thread."""
        from headcode.server import run_server

        try:
            run_server(self.app, self.socket, self.log_level)
        finally:
            self.generator.close()


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
    if s.heads and not s.surrogates:
        raise HeadcodeError("--heads picks heads of a plan: give --surrogates FILE too")


@dataclass(frozen=True, eq=False)
class ServedApp:
    app: Any                                  # the FastAPI app (headcode.server)
    served: Any                               # headcode.server.ServedModel
    generator: Any
    has_chat_template: bool


def served_app(s: ServeSettings) -> ServedApp:
    """The model loaded with the plan in place, and the app that serves it (this process or a
    Ray Serve replica: ``headcode.cluster.serve``)."""
    from headcode.api import load_surrogate_model
    from headcode.runtime.surrogate.serving import Generator
    from headcode.server import ServedModel, build_app

    template = _read(s.chat_template, "chat template") if s.chat_template else None
    lm, handle = load_surrogate_model(s.model, s.surrogates, heads=s.heads, backend=s.backend)
    replaced = tuple(str(h) for h in handle.heads) if handle is not None else ()
    name = lm.name if "/" not in lm.name else Path(lm.name).name
    served = ServedModel(id=s.name or (f"{name}+{Path(s.surrogates).stem}" if s.surrogates else name),
                         base_model=lm.name, plan=str(s.surrogates) if s.surrogates else None, heads=replaced,
                         total_heads=lm.n_layers * lm.n_heads, max_tokens=s.max_tokens)
    gen = Generator(lm.model, lm.tokenizer, chat_template=template, max_queue=s.max_queue)
    return ServedApp(build_app(gen, served), served, gen, bool(getattr(lm.tokenizer, "chat_template", None)))


def asgi_app(s: ServeSettings) -> Any:
    """The FastAPI app serving ``s`` (what each Ray Serve replica builds: ``headcode.cluster.serve``)."""
    return served_app(s).app


def start_server(s: ServeSettings) -> Server:
    """A server ready to ``run()``: the socket bound, the model loaded with the plan in place."""
    from headcode.server import listen

    check_settings(s)
    if s.chat_template:
        _read(s.chat_template, "chat template")
    sock = listen(s.host, s.port)
    try:
        a = served_app(s)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return Server(a.served, f"http://{host}:{port}/v1", a.has_chat_template, a.app, sock, a.generator, s.log_level)
