"""How big a program is to read: the one definition of program size, used everywhere a program is shown.

- **size**: the number of AST nodes in the body of ``attend`` (the function a program defines;
  the last one if it defines no ``attend``), not counting expression contexts (``Load``/``Store``,
  which are not written). Every literal counts one node (``0.7``, ``'the'``); every operator
  counts one (the ``+`` of ``a + b`` is a node of its own).
- **selector terms**: calls whose first argument is the tokens ``t`` (``previous(t, 1)``).
- **longest literal list**: the most string literals in one call (``token_in('a', 'b')``: 2).

Pure ``ast``: nothing here runs the program.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

READABLE_MEDIAN = 40     # the readability budget a run keeps: median size,
READABLE_MAX = 120       # largest program,
READABLE_TERMS = 4       # selector terms a head may use ...
READABLE_TERMS_SHARE = 0.8  # ... in at least this share of heads,
READABLE_WORDS = 8       # and the longest literal word list


@dataclass(frozen=True)
class Size:
    nodes: int
    terms: int
    longest_list: int

    def __str__(self) -> str:
        return f"size {self.nodes} (AST nodes), {self.terms} selector terms"


def _body(source: str) -> list[ast.stmt]:
    tree = ast.parse(source)
    fns = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    if not fns:
        raise ValueError("program source defines no function (expected `def attend(t): ...`)")
    fn = next((f for f in fns if f.name == "attend"), fns[-1])
    body = list(fn.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]  # a docstring is documentation, not program
    return body


def _nodes(body: list[ast.stmt]) -> list[ast.AST]:
    return [n for stmt in body for n in ast.walk(stmt) if not isinstance(n, ast.expr_context)]


def program_size(source: str) -> Size:
    """Size, selector terms and longest literal list of a program's source (``ValueError`` if the
    source is not a program)."""
    try:
        nodes = _nodes(_body(source))
    except SyntaxError as e:
        raise ValueError(f"syntax error in program source, line {e.lineno}: {e.msg}") from e
    terms, longest = 0, 0
    for n in nodes:
        if isinstance(n, ast.Call):
            if n.args and isinstance(n.args[0], ast.Name) and n.args[0].id == "t":
                terms += 1
            strings = sum(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in n.args)
            longest = max(longest, strings)
    return Size(len(nodes), terms, longest)
