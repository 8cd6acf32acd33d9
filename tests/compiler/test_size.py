"""The one size measure: AST nodes of ``attend``'s body, counted by hand on small programs."""

import pytest

from headcode.compiler.size import program_size


def _src(body: str, doc: str = "") -> str:
    return "def attend(t):\n" + (f'    """{doc}"""\n' if doc else "") + f"    return {body}\n"


@pytest.mark.parametrize("body, nodes, terms, longest", [
    # Return, Call, Name first, Name t
    ("first(t)", 4, 1, 0),
    # Return + BinOp, Add + [BinOp, 0.7, Mult, Call, Name, Name t, 1] + [BinOp, 0.3, Mult, Call, Name, Name t]
    ("0.7 * previous(t, 1) + 0.3 * first(t)", 16, 2, 0),
    # Return, Call uniform, Name, Name t, Call token_in, Name, 3 literals: every literal counts one
    ("uniform(t, token_in('a', 'b', 'c'))", 9, 1, 3),
    # Return + Call when, Name when, Name punct, + Call, Name, Name t: the gate is not a selector term
    ("when(punct, first(t))", 7, 1, 0),
    # Return + BinOp, BitAnd + Call, Name, Name t + UnaryOp, Invert, Name punct
    ("uniform(t) & ~punct", 9, 1, 0),
])
def test_size_of_hand_written_programs(body, nodes, terms, longest):
    s = program_size(_src(body))
    assert (s.nodes, s.terms, s.longest_list) == (nodes, terms, longest)
    assert str(s).startswith(f"size {nodes} ")


def test_docstring_and_helpers_do_not_count():
    plain = program_size(_src("first(t)")).nodes
    assert program_size(_src("first(t)", doc="the first token")).nodes == plain
    helper = "def helper(t):\n    return uniform(t) + first(t) + previous(t, 3)\n\n" + _src("first(t)")
    assert program_size(helper).nodes == plain  # only attend's body is measured


def test_statements_count_and_bad_source_is_an_error():
    two = "def attend(t):\n    p = previous(t, 1)\n    return p\n"
    # Assign, Name p, Call, Name previous, Name t, 1 + Return, Name p
    assert program_size(two).nodes == 8
    with pytest.raises(ValueError, match="no function"):
        program_size("x = 1\n")
    with pytest.raises(ValueError, match="syntax error"):
        program_size("def attend(t):\n    return (\n")
