"""What a program's source sees: the selectors, combinators, predicates, token classes and numpy.

The checker (``compiler.check``) refuses any binding of these names, and both the host
(``Program.from_source``) and the sandbox's worker run a program with exactly this namespace.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from headcode.compiler import classes, pattern, predicates, selectors


def namespace() -> dict[str, Any]:
    """What a program's source sees: the selectors, combinators, predicates and numpy."""
    ns: dict[str, Any] = {"np": np, "numpy": np, "when": pattern.when, "tok": predicates.tok,
                          "token_in": predicates.token_in, "Pred": predicates.Pred}
    ns.update(selectors.functions())  # every registered selector's functions
    ns.update(predicates.BUILTIN_PREDS)
    ns.update(classes.CLASS_PREDS)  # the named token classes (pronoun, name, verb_like, ...)
    # `word_start` names both a predicate and a selector: one object serves as both
    ns["word_start"] = _WordStart(predicates.word_start.name, predicates.word_start.fn)
    return ns


class _WordStart(predicates.Pred):
    """The ``word_start`` predicate that, called on ``Tokens`` (or a tracer), is the selector."""

    def __call__(self, x: Any) -> Any:  # type: ignore[override]
        if isinstance(x, str):
            return bool(self.fn(x))
        return selectors.functions()["word_start"](x)
