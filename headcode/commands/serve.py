"""Serve a model with compiled programs in place of some heads over an OpenAI-compatible API.

  headcode serve --surrogates out/select/plan.safetensors                 # http://127.0.0.1:8000/v1
  headcode serve gpt2 --surrogates plan.safetensors --port 0 --name gpt2-sym  # port 0: any free port

Endpoints: POST /v1/completions and /v1/chat/completions (streaming with "stream": true),
GET /v1/models (the model id and the plan it runs), GET /health, GET /metrics (Prometheus).
Every head in the plan file is replaced (write a plan with only the heads you want with `headcode
select`); --heads keeps only some of them. Chat uses the tokenizer's chat template
(--chat-template FILE gives one to a tokenizer without). Requests run together: every step
decodes one token of each running request in one batched forward (--max-batch rows); new
requests join as rows free up; past --max-queue running or waiting a request gets 429.
Ctrl-C / SIGTERM: no new requests (503), the accepted ones finish (up to --drain-timeout s).
Any OpenAI client works, e.g. OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from headcode.kernels.program_head import backends

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
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests running or waiting at once; past it a request gets HTTP 429 (default 64)")
    p.add_argument("--backend", default=backends.DEFAULT, choices=backends.names(),
                   help="; ".join(f"{b.name}: {b.summary}" for b in backends.BACKENDS.values()))
    p.add_argument("--max-batch", type=int, default=16,
                   help="requests decoded together in one batched forward (default 16; backends other than "
                        "numba: 1)")
    p.add_argument("--request-timeout", type=float, default=600.0,
                   help="seconds a request may take from arrival to its last token (default 600)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="on shutdown, seconds the accepted requests may still run (default 30)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    from headcode.pipeline.serve import ServeSettings, start_server

    heads = tuple(h.strip() for h in args.heads.split(",") if h.strip()) if args.heads else None
    server = start_server(ServeSettings(
        model=args.model, surrogates=Path(args.surrogates) if args.surrogates else None, heads=heads,
        host=args.host, port=args.port, name=args.name,
        chat_template=Path(args.chat_template) if args.chat_template else None, max_tokens=args.max_tokens,
        max_queue=args.max_queue, max_batch=args.max_batch, request_timeout=args.request_timeout,
        drain_timeout=args.drain_timeout, backend=args.backend, log_level=args.log_level))
    served = server.served
    print(f"headcode: serving {served.id!r} ({len(served.heads)} of {served.total_heads} heads replaced by "
          f"programs) at {server.url}", flush=True)
    if not server.has_chat_template:
        print("headcode: the tokenizer has no chat template: /v1/chat/completions answers 400 "
              "(give one with --chat-template FILE)", file=sys.stderr, flush=True)
    server.run()
    return 0
