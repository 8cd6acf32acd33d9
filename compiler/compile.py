"""The compiler driver: program -> ``CompiledHead`` through the passes
``program_to_ir`` (trace) -> ``validate`` -> ``ir_to_plan`` (tables, terms).

A program that cannot be compiled (free-form numpy, a product or maximum of patterns, a
predicate that raises) gives an uncompiled head with every reason: its source stays usable
through the reference path. ``strict=True`` raises ``CompileError`` instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from headcode.compiler.head import CompiledHead
from headcode.compiler.ir_to_plan import ir_to_plan
from headcode.compiler.program import Program, Untraceable
from headcode.compiler.program_to_ir import program_to_ir
from headcode.compiler.tables import TableError
from headcode.compiler.validate import CompileError, validate


def uncompiled(program: Program, reasons: Sequence[str], n_vocab: int, fingerprint: str,
               model_id: str = "") -> CompiledHead:
    return CompiledHead(name=program.name, source=program.source, terms=(), table_names=(),
                        tables=np.zeros((0, n_vocab), dtype=np.uint8), fingerprint=fingerprint,
                        compiled=False, reasons=tuple(reasons), model_id=model_id)


def compile_program(program: Program, pieces: Sequence[str], fingerprint: str, model_id: str = "",
                    strict: bool = False) -> CompiledHead:
    """Compile ``program`` against a vocabulary (``pieces[id]`` = the decoded piece of token
    ``id``; ``fingerprint`` names that vocabulary). Returns a compiled head, or an uncompiled
    one with reasons (``strict``: raise ``CompileError`` instead)."""
    try:
        try:
            expr = program_to_ir(program)
        except Untraceable as e:
            raise CompileError([f"untraceable: {e}"], program.name) from e
        terms = validate(expr, program.name)
        try:
            plan = ir_to_plan(terms, pieces, fingerprint)
        except TableError as e:
            raise CompileError([str(e)], program.name) from e
    except CompileError as e:
        if strict:
            raise
        return uncompiled(program, e.reasons, len(pieces), fingerprint, model_id)
    out_terms, names, tables, bnd, nwd = plan
    return CompiledHead(name=program.name, source=program.source, terms=out_terms, table_names=names,
                        tables=tables, fingerprint=fingerprint, compiled=True, reasons=(),
                        boundary_table=bnd, new_word_table=nwd, model_id=model_id)


def compile_source(source: str, pieces: Sequence[str], fingerprint: str, name: str | None = None,
                   model_id: str = "", strict: bool = False) -> CompiledHead:
    """``compile_program`` from source (``ProgramError`` if the source does not build)."""
    return compile_program(Program.from_source(source, name), pieces, fingerprint, model_id, strict)
