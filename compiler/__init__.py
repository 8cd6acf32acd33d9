"""headcode.compiler: trace programs into selector IR, validate, lower to vocabulary tables and
kernel terms, run them, and save/load surrogate plans.

Passes: ``program_to_ir`` -> ``validate`` -> ``ir_to_terms``; driver ``compile`` (run in the sandbox's worker; ``sandbox`` compiles untrusted source there); ``dispatch``
(``run_head``); ``export`` (``save_plan``/``load_plan``). Names are imported lazily so that
``import headcode.compiler.predicates`` stays torch-free.
"""

from __future__ import annotations

from headcode.lazy import lazy_attributes

_API = {
    "compile_program": "headcode.compiler.sandbox",
    "compile_source": "headcode.compiler.sandbox",
    "CompiledHead": "headcode.compiler.head",
    "SurrogatePlan": "headcode.compiler.head",
    "Term": "headcode.compiler.head",
    "CompileError": "headcode.compiler.validate",
    "run_head": "headcode.compiler.dispatch",
    "save_plan": "headcode.compiler.export",
    "load_plan": "headcode.compiler.export",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy_attributes(__name__, _API)
