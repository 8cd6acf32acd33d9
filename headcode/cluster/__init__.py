"""More than one machine, on Ray (the ``cluster`` extra: ``pip install headcode[cluster]``).

Nothing here imports Ray at module level: a command imports this package only when it is given
``--cluster``, and ``connect`` imports Ray then. ``--cluster ray`` starts a local Ray instance on
this machine (all its cores); ``--cluster ray:ADDRESS`` joins a running cluster (``ray start
--head`` printed the address; ``ray:auto`` finds the one on this machine).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from headcode.errors import HeadcodeError

INSTALL = "pip install 'headcode[cluster]'"
# what the workers need from this process's environment: the LLM endpoint's key, and one BLAS
# thread per process (the offline search's small products are ~450x slower with more, measured)
PASSED_ENV = ("OPENAI_API_KEY", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")


@dataclass(frozen=True)
class ClusterSpec:
    """Where the work goes: ``address`` None starts a local Ray instance; else a running cluster."""

    address: str | None = None
    num_cpus: int | None = None      # a local instance only: cores Ray may use (default: all)

    def __str__(self) -> str:
        return "ray" + (f":{self.address}" if self.address else "")


def parse_cluster(text: str | None) -> ClusterSpec | None:
    """``None``/``""``/``"local"`` -> None (this process); ``"ray"`` -> a local Ray instance;
    ``"ray:ADDRESS"`` (``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``) -> that cluster."""
    if text is None or text in ("", "local"):
        return None
    kind, sep, address = text.partition(":")
    if kind != "ray":
        raise HeadcodeError(f"--cluster {text!r}: give ray (a local Ray instance) or ray:ADDRESS "
                            "(the address `ray start --head` printed, or ray:auto)")
    if sep and not address:
        raise HeadcodeError(f"--cluster {text!r}: the address after ray: is empty (e.g. ray:10.0.0.5:6379)")
    return ClusterSpec(address or None)


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    _token_auth()  # read when Ray is imported
    try:
        import ray
    except ImportError as e:
        raise HeadcodeError(f"--cluster needs Ray, which is not installed: {INSTALL}") from e
    return ray


def _token_auth() -> None:
    """``ray start --head`` enables token authentication when a token exists (``~/.ray/auth_token``,
    Ray >= 2.52), but a client joining by address sends its token only with ``RAY_AUTH_MODE=token``
    (read when Ray is imported): set it when the user has not chosen and a token is there (else the
    head refuses the client). A local instance started with it uses that token, as Ray does by default."""
    from pathlib import Path

    if "RAY_AUTH_MODE" not in os.environ and (
            os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


def connect(spec: ClusterSpec) -> Any:
    """The ``ray`` module, connected to ``spec``'s cluster (once per process)."""
    ray = require_ray()
    if not ray.is_initialized():
        env = {"env_vars": {k: os.environ[k] for k in PASSED_ENV if k in os.environ}}
        try:
            if spec.address:
                ray.init(address=spec.address, log_to_driver=False, runtime_env=env)
            else:
                # "local": a new instance, never a cluster a past `ray start` left in /tmp/ray
                ray.init(address="local", num_cpus=spec.num_cpus, log_to_driver=False, include_dashboard=False, runtime_env=env)
        except ConnectionError as e:
            raise HeadcodeError(f"cannot reach the Ray cluster at {spec.address} ({e}); start it with "
                                "`ray start --head` there, or fix the address") from e
    return ray

