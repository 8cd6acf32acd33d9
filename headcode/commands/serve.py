"""Serve a model with compiled programs in place of some heads over an OpenAI-compatible API.

  headcode serve --surrogates out/select/plan.safetensors                 # http://127.0.0.1:8000/v1
  headcode serve gpt2 --surrogates plan.safetensors --port 0 --name gpt2-sym  # port 0: any free port

Endpoints: POST /v1/completions and /v1/chat/completions (streaming with "stream": true),
GET /v1/models (the model id and the plan it runs), GET /health. Every head in the plan file is
replaced (write a plan with only the heads you want with `headcode select`); --heads keeps only
some of them. Chat uses the tokenizer's chat template (--chat-template FILE gives one to a
tokenizer without). Requests are answered one at a time, in order of arrival. Any OpenAI client
works, e.g. OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "serve the model (with a surrogate plan) over an OpenAI-compatible HTTP API"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="smollm2-135m", help="model spec (default: smollm2-135m)")
    p.add_argument("--surrogates", default=None,
                   help="plan file (from `headcode select` or `headcode compile`); omit to serve the base model")
    p.add_argument("--heads", default=None, help="comma list of plan heads to use, e.g. L3.H7,L4.H0 (default all)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--name", default=None, help="model id clients use (default: MODEL+PLAN, or MODEL)")
    p.add_argument("--chat-template", default=None, help="a Jinja chat template file for tokenizers without one")
    p.add_argument("--max-tokens", type=int, default=1024, help="the most tokens one request may generate")
    p.add_argument("--backend", default="numba", choices=["numba", "triton"])
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])


def _read(path: str, what: str) -> str:
    from headcode.errors import HeadcodeError

    try:
        return Path(path).read_text()
    except OSError as e:
        raise HeadcodeError(f"cannot read the {what} {path} ({e.strerror or e})") from e


def run(args: argparse.Namespace) -> int:
    from headcode.api import load_surrogate_model
    from headcode.errors import HeadcodeError
    from headcode.runtime.serving import Generator
    from headcode.server import ServedModel, build_app, listen, run_server

    if args.max_tokens < 1:
        raise HeadcodeError(f"--max-tokens {args.max_tokens}: give a positive number of tokens")
    if args.heads and not args.surrogates:
        raise HeadcodeError("--heads picks heads of a plan: give --surrogates FILE too")
    template = _read(args.chat_template, "chat template") if args.chat_template else None
    sock = listen(args.host, args.port)  # before loading: a busy port fails in a second, not after the model
    heads = [h.strip() for h in args.heads.split(",") if h.strip()] if args.heads else None
    try:
        lm, handle = load_surrogate_model(args.model, args.surrogates, heads=heads, backend=args.backend)
    except BaseException:
        sock.close()
        raise
    replaced = tuple(str(h) for h in handle.heads) if handle is not None else ()
    name = lm.name if "/" not in lm.name else Path(lm.name).name
    served = ServedModel(id=args.name or (f"{name}+{Path(args.surrogates).stem}" if args.surrogates else name),
                         base_model=lm.name, plan=args.surrogates, heads=replaced,
                         total_heads=lm.n_layers * lm.n_heads, max_tokens=args.max_tokens)
    gen = Generator(lm.model, lm.tokenizer, chat_template=template)
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    print(f"headcode: serving {served.id!r} ({len(replaced)} of {served.total_heads} heads replaced by programs) "
          f"at http://{host}:{port}/v1", flush=True)
    if not getattr(lm.tokenizer, "chat_template", None):
        print("headcode: the tokenizer has no chat template: /v1/chat/completions answers 400 "
              "(give one with --chat-template FILE)", file=sys.stderr, flush=True)
    try:
        run_server(build_app(gen, served), sock, args.log_level)
    finally:
        gen.close()
    return 0
