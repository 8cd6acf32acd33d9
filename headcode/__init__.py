"""headcode: attention heads as short Python programs, compiled to kernels.

The public API is imported lazily so that ``import headcode`` stays cheap (no torch)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "load_model": "headcode.runtime.loading",
    "capture": "headcode.runtime.capture",
    "Tokens": "headcode.runtime.tokens",
    "HeadRef": "headcode.runtime.heads",
    "Program": "headcode.compiler.program",
    "HeadcodeError": "headcode.errors",
    "from_pretrained": "headcode.api",
    "load_surrogate_model": "headcode.api",
    "apply_plan": "headcode.runtime.surrogate",
    "surrogates_applied": "headcode.runtime.surrogate",
    "load_corpus": "headcode.runtime.corpus",
}


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'headcode' has no attribute {name!r}")
