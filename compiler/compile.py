"""The compiler driver: program -> ``CompiledHead`` through the passes
``program_to_ir`` (trace) -> ``validate`` -> ``ir_to_terms`` (tables, terms).

Program source is untrusted: ``compile_source`` (and ``compile_program``, which compiles a
program's source) checks it (``compiler.check``) and runs the passes inside the sandbox
(``headcode.compiler.sandbox``), where the program is traced and its ``tok()`` tables are
computed; the host receives the head as data (JSON terms and a ``uint8`` table stack) and
validates that data before building the ``CompiledHead`` (``head.check_head_data``). No code
of the program runs in the host.

A program that cannot be compiled (refused by the check, free-form numpy, a product or maximum
of patterns, a predicate that raises) gives an uncompiled head with every reason: a record of
the refusal, which no runtime runs. ``strict=True`` raises ``CompileError`` instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from headcode.compiler.head import CompiledHead
from headcode.compiler.ir_to_terms import ir_to_terms
from headcode.compiler.program import Program, Untraceable
from headcode.compiler.program_to_ir import program_to_ir
from headcode.compiler.tables import TableError
from headcode.compiler.validate import CompileError, validate


def uncompiled(name: str, source: str, reasons: Sequence[str], n_vocab: int, fingerprint: str,
               model_id: str = "") -> CompiledHead:
    return CompiledHead(name=name, source=source, terms=(), table_names=(),
                        tables=np.zeros((0, n_vocab), dtype=np.uint8), fingerprint=fingerprint,
                        compiled=False, reasons=tuple(reasons), model_id=model_id)


def compile_in_process(program: Program, pieces: Sequence[str], fingerprint: str, model_id: str = "",
                       strict: bool = False) -> CompiledHead:
    """The passes, run in this process on a program already built here. Only the sandbox's
    child calls this on untrusted programs (the program runs: it is traced, its predicates
    are evaluated over the vocabulary)."""
    try:
        try:
            expr = program_to_ir(program)
        except Untraceable as e:
            raise CompileError([f"untraceable: {e}"], program.name) from e
        terms = validate(expr, program.name)
        try:
            plan = ir_to_terms(terms, pieces, fingerprint)
        except TableError as e:
            raise CompileError([str(e)], program.name) from e
    except CompileError as e:
        if strict:
            raise
        return uncompiled(program.name, program.source, e.reasons, len(pieces), fingerprint, model_id)
    out_terms, names, tables = plan
    return CompiledHead(name=program.name, source=program.source, terms=out_terms, table_names=names,
                        tables=tables, fingerprint=fingerprint, compiled=True, reasons=(), model_id=model_id)
