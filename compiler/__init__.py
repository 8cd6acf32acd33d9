"""headcode.compiler: trace programs into selector IR, validate, lower to vocabulary tables and
kernel terms, run them, and save/load surrogate plans.

Passes: ``program_to_ir`` -> ``validate`` -> ``ir_to_plan``; driver ``compile``; ``run``
(``run_head``); ``export`` (``save_plan``/``load_plan``). Names are imported lazily so that
``import headcode.compiler.predicates`` stays torch-free.
"""

from __future__ import annotations

from typing import Any

_API = {
    "compile_program": "headcode.compiler.compile",
    "compile_source": "headcode.compiler.compile",
    "CompiledHead": "headcode.compiler.head",
    "SurrogatePlan": "headcode.compiler.head",
    "Term": "headcode.compiler.head",
    "CompileError": "headcode.compiler.validate",
    "run_head": "headcode.compiler.run",
    "save_plan": "headcode.compiler.export",
    "load_plan": "headcode.compiler.export",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'headcode.compiler' has no attribute {name!r}")
