"""``serve --replicas N``: the same FastAPI app (``headcode.server``) as a Ray Serve deployment.

Each replica is a Ray actor that loads the model with its plan and builds the app once
(``build(settings)``, given by the caller — ``pipeline.serve.create_app`` — through Serve's
late-bound ingress); Ray Serve's HTTP proxy on
``host:port`` routes each request to a replica, so the OpenAI API is the one ``headcode serve``
answers in one process. Serve's own deployment options pass through unchanged
(``deployment_options``: ``autoscaling_config``, ``max_ongoing_requests``, ``ray_actor_options``,
``request_router_config``, ...); Serve restarts a replica that dies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from headcode.cluster import ClusterSpec, connect
from headcode.errors import HeadcodeError

APP_NAME = "headcode"


@dataclass(frozen=True)
class ReplicaSettings:
    replicas: int = 1                                   # ignored when autoscaling_config is given
    cpus_per_replica: float = 1.0
    deployment_options: dict[str, Any] = field(default_factory=dict)   # Ray Serve's, passed through


def _deployment(serve: Any) -> Any:
    """The deployment class: built here so that Ray is imported only when asked for."""

    @serve.ingress()
    class HeadcodeReplica:
        def __init__(self, build: Callable[[Any], Any], settings: Any):
            self.build, self.settings = build, settings

        def __serve_build_asgi_app__(self) -> Any:
            return self.build(self.settings)

    return serve.deployment(name="headcode")(HeadcodeReplica)


def serve_replicas(s: Any, spec: ClusterSpec, r: ReplicaSettings, build: Callable[[Any], Any]) -> str:
    """Deploy ``r.replicas`` replicas of the server ``s`` (checked ``pipeline.serve.ServeSettings``:
    ``s.host``, ``s.port``) on ``spec``'s cluster, each building its ASGI app with ``build(s)``
    (a module-level function, pickled by name); returns the OpenAI base URL once every replica
    answers."""
    if r.replicas < 1:
        raise HeadcodeError(f"--replicas {r.replicas}: give at least 1")
    connect(spec)
    from ray import serve

    opts = {"num_replicas": r.replicas, "ray_actor_options": {"num_cpus": r.cpus_per_replica}}
    opts.update(r.deployment_options)
    if "autoscaling_config" in r.deployment_options:
        opts.pop("num_replicas")
    try:
        app = _deployment(serve).options(**opts).bind(build, s)
        serve.start(http_options={"host": s.host, "port": s.port})
        serve.run(app, name=APP_NAME, route_prefix="/")
    except (TypeError, ValueError, RuntimeError) as e:
        raise HeadcodeError(f"Ray Serve could not deploy the server with options {opts}: {str(e)[:300]}") from e
    host = f"[{s.host}]" if ":" in s.host else s.host
    return f"http://{host}:{s.port}/v1"


def stop() -> None:
    """Delete the deployment (its replicas free the cluster)."""
    from ray import serve

    serve.delete(APP_NAME)
