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

More than one replica (pip install 'headcode[cluster]'): --replicas N runs N copies of the model
as a Ray Serve deployment on a local Ray instance, or on a running cluster with --cluster
ray:ADDRESS; Ray Serve's HTTP proxy answers on --host/--port with the same API. Serve's deployment
options pass through as JSON, e.g. --serve-options '{"autoscaling_config": {"min_replicas": 1,
"max_replicas": 4, "target_ongoing_requests": 2}, "max_ongoing_requests": 8}'.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from headcode.commands._options import add_model
from headcode.kernels.program_head import backends

HELP = "serve the model (with a surrogate plan) over an OpenAI-compatible HTTP API"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p)
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
    p.add_argument("--replicas", type=int, default=None, help="serve N replicas on Ray Serve (the cluster extra)")
    p.add_argument("--cluster", default=None, metavar="ray[:ADDRESS]",
                   help="with --replicas: ray (a local instance, the default) or ray:ADDRESS (a running cluster)")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="with --replicas: Ray CPUs per replica")
    p.add_argument("--serve-options", default=None, metavar="JSON",
                   help="with --replicas: Ray Serve deployment options (autoscaling_config, max_ongoing_requests, ...)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])


def _replicas(args: argparse.Namespace, settings: object) -> int:
    """``--replicas``: deploy on Ray Serve, then wait until interrupted."""
    import json
    import time

    from headcode.cluster import parse_cluster
    from headcode.cluster.serve import ReplicaSettings, serve_replicas, stop
    from headcode.errors import HeadcodeError
    from headcode.pipeline.serve import check_settings, create_app

    try:
        options = json.loads(args.serve_options) if args.serve_options else {}
    except json.JSONDecodeError as e:
        raise HeadcodeError(f"--serve-options is not JSON ({e}): e.g. '{{\"max_ongoing_requests\": 8}}'") from e
    if not isinstance(options, dict):
        raise HeadcodeError("--serve-options: give a JSON object of Ray Serve deployment options")
    spec = parse_cluster(args.cluster or "ray")
    if spec is None:
        raise HeadcodeError("--replicas runs on Ray: give --cluster ray or ray:ADDRESS (or no --cluster)")
    n = args.replicas if args.replicas is not None else 1
    check_settings(settings)
    url = serve_replicas(settings, spec, ReplicaSettings(n, args.cpus_per_replica, options), create_app)
    print(f"headcode: serving {n} replicas on Ray Serve ({spec}) at {url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stop()
    return 0


def run(args: argparse.Namespace) -> int:
    from headcode.pipeline.serve import ServeSettings, start_server

    heads = tuple(h.strip() for h in args.heads.split(",") if h.strip()) if args.heads else None
    settings = ServeSettings(
        model=args.model, surrogates=Path(args.surrogates) if args.surrogates else None, heads=heads,
        host=args.host, port=args.port, name=args.name,
        chat_template=Path(args.chat_template) if args.chat_template else None, max_tokens=args.max_tokens,
        max_queue=args.max_queue, max_batch=args.max_batch, request_timeout=args.request_timeout,
        drain_timeout=args.drain_timeout, backend=args.backend, log_level=args.log_level)
    if args.replicas is not None or args.cluster:
        return _replicas(args, settings)
    server = start_server(settings)
    served = server.served
    print(f"headcode: serving {served.id!r} ({len(served.heads)} of {served.total_heads} heads replaced by "
          f"programs) at {server.url}", flush=True)
    if not server.has_chat_template:
        print("headcode: the tokenizer has no chat template: /v1/chat/completions answers 400 "
              "(give one with --chat-template FILE)", file=sys.stderr, flush=True)
    server.run()
    return 0
