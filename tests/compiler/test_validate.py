"""Validation: every unsupported construct is reported with its reason, all at once."""

from __future__ import annotations

import pytest
from catalogue import PROGRAMS, REJECTED, VOCAB

from headcode.compiler import CompileError, compile_program, ir
from headcode.compiler.predicates import punct
from headcode.compiler.program import Program
from headcode.compiler.validate import validate
from headcode.errors import HeadcodeError


@pytest.mark.parametrize("case", REJECTED, ids=[c.name for c in REJECTED])
def test_rejected_programs_are_uncompiled_with_reasons(case):
    head = compile_program(Program.from_source(case.source, case.name), VOCAB, "fp")
    assert not head.compiled
    assert head.terms == () and head.tables.shape == (0, len(VOCAB))
    assert head.source == case.source  # kept for the reference path
    text = " | ".join(head.reasons)
    for fragment in case.reasons:
        assert fragment in text, (fragment, head.reasons)


@pytest.mark.parametrize("case", REJECTED, ids=[c.name for c in REJECTED])
def test_strict_raises_one_compile_error(case):
    with pytest.raises(CompileError) as e:
        compile_program(Program.from_source(case.source, case.name), VOCAB, "fp", strict=True)
    assert isinstance(e.value, HeadcodeError)
    assert case.name in str(e.value) and "\n" not in str(e.value)


def test_all_reasons_collected_not_just_the_first():
    s1, s2 = ir.Sel("offset", k=1), ir.Sel("first")
    expr = ir.Mix(((0.5, ir.Product(s1, s2)), (0.3, ir.Max(s1, s2)), (0.2, ir.Gate(ir.Max(s1, s2), query=punct)),
                   (-1.0, s1), (1.0, ir.Sel("decay", rate=1.5)), (1.0, ir.Sel("offset", k=-2)),
                   (1.0, ir.Sel("most_recent")), (1.0, ir.Sel("teleport"))))
    with pytest.raises(CompileError) as e:
        validate(expr)
    reasons = e.value.reasons
    assert len(reasons) == 9, reasons
    for fragment in ("product", "maximum", "predicate applied", "non-negative", "decay rate",
                     "offset k", "most_recent needs", "unknown selector kind 'teleport'"):
        assert any(fragment in r for r in reasons), fragment


def test_validate_flattens_nested_mixes_and_drops_zero_weights():
    a, b = ir.Sel("offset", k=1), ir.Sel("uniform")
    terms = validate(ir.Mix(((2.0, ir.Mix(((0.5, a), (0.25, b)))), (0.0, ir.Sel("first")))))
    assert terms == [(1.0, a), (0.5, b)]


def test_predicate_that_raises_is_a_reason():
    src = "def attend(t):\n    return uniform(t, tok(lambda p: 1 / len(p.strip()) > 0))\n"
    head = compile_program(Program.from_source(src), VOCAB + (" ",), "fp-raise")
    assert not head.compiled
    assert "ZeroDivisionError" in head.reasons[0] and "on piece '\\n'" in head.reasons[0]


def test_every_catalogue_program_passes_validation():
    for c in PROGRAMS:
        assert validate(Program.from_source(c.source).trace(), c.name)
