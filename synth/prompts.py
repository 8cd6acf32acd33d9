"""Prompts for the language-model backend: the vocabulary, a head's summary, and feedback."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from headcode.compiler.tokens import Tokens
from headcode.synth.summary import HeadSummary, _show

VOCABULARY = """\
Write each program as plain Python: `def attend(t):` returning a pattern (or a [T, T] numpy
array of non-negative scores; patterns are preferred because they compile to fast kernels).
The framework applies the causal mask and normalises every query row; an empty row attends
to the first token.

Selectors (each a distribution over keys k <= q for every query q):
  previous(t, k)              the token k positions back;  current(t): the query itself
  first(t)                    the first token of the text
  uniform(t, pred=None)       uniform over keys so far (where pred holds)
  in_same_sentence(t, pred=None)  uniform over the keys of the query's sentence so far
  same_token(t)               earlier occurrences of the query's own token (itself included)
  most_recent(t, pred, strict=False)  the latest key where pred holds (strict: before the query)
  sentence_start(t)           the first token of the query's sentence
  word_start(t)               the first token of the query's word
  induction(t)                the token right after the latest earlier copy of the query's token
  decay(t, rate, pred=None)   weights rate**(q-k), 0 < rate < 1, over keys (where pred holds)
  clause_start(t)             the first token of the query's clause (after the latest , ; : . ! ? or newline)
  after_last(t, pred)         the token right after the latest earlier token where pred holds
  before_last(t, pred)        the token right before the latest token where pred holds
  nearest_name(t)             the nearest earlier name
Combinators: a + b, 0.3 * a (weights >= 0), a & pred (keep keys where pred holds),
  when(pred, a) (a only for queries where pred holds; other queries get nothing from it).
Token classes (each reads one token's text), combined with & | ~:
  pronoun, determiner, preposition, conjunction, auxiliary, name, noun_like, verb_like,
  adjective_like, adverb_like, number, clause_boundary, punct, sentence_end, comma, newline, space,
  word_start, capitalised, digit, quote, alpha, function_word, content_word, boundary, new_word,
  token_in("and", "but") (at most 8 words), tok(lambda p: ..., "name")
Shorter is better: a program is scored on fidelity and on its size (AST nodes of attend's body).
Example:
```python
def attend(t):
    return when(punct, 0.7 * first(t) + 0.3 * current(t)) + when(~punct, 0.8 * previous(t, 1) + 0.2 * first(t))
```
Only numpy, math, re, itertools, collections, functools and string may be imported. Programs are
checked before they run: no classes, decorators, `with`, `global` or `yield`; no names or
attributes starting with `_`; no file access, no `getattr`/`eval`/`open`. A program that does not
return a pattern is run on each prefix of the text (row q sees tokens <= q only) and is not
compiled: prefer patterns."""

SYSTEM = ("You explain attention heads of a transformer language model as short, readable Python "
          "programs that predict the head's attention pattern from the text alone.")


def first_prompt(summary: HeadSummary, n_programs: int) -> str:
    return (f"{VOCABULARY}\n\nHere is what the head does on some texts.\n{summary.text()}\n\n"
            f"Write {n_programs} different candidate programs for this head, each in its own "
            "```python code block, from the simplest to the most detailed.")


def feedback_prompt(best_source: str, best_iou: float, worst: Sequence[str], n_programs: int) -> str:
    rows = "\n".join(worst)
    return (f"Your best program so far reaches a mean IoU of {best_iou:.3f} with the true attention:\n"
            f"```python\n{best_source.strip()}\n```\nRows where it is furthest off "
            f"(query token, then true and predicted top keys as token@position:percent):\n{rows}\n\n"
            f"Write {n_programs} improved programs, each in its own ```python code block.")


_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.S)


def code_blocks(text: str) -> list[str]:
    """The Python code blocks of a reply that define a function, in order, without repeats."""
    out = []
    for b in _BLOCK.findall(text or ""):
        b = b.strip() + "\n"
        if "def " in b and b not in out:
            out.append(b)
    return out


def _top(row: np.ndarray, t: Tokens, k: int = 3) -> str:
    idx = np.argsort(-row, kind="stable")[:k]
    return " ".join(f"{_show(t.pieces[j])}@{j}:{round(100 * row[j])}" for j in idx if row[j] > 0.005)


def worst_rows(tokens: Sequence[Tokens], true: Sequence[np.ndarray], prog: Sequence[np.ndarray],
               n: int = 8) -> list[str]:
    """The ``n`` rows (over all texts) with the lowest IoU, described for the model."""
    from headcode.synth.scores import row_iou

    items = []
    for ti, (a, p) in enumerate(zip(true, prog)):
        r = row_iou(p, a)
        for q in np.argsort(r, kind="stable")[:n]:
            items.append((float(r[q]), ti, int(q)))
    items.sort()
    out = []
    for score, ti, q in items[:n]:
        t = tokens[ti]
        ctx = "".join(t.pieces[max(0, q - 6):q + 1]).replace("\n", "\\n")
        out.append(f"- query {_show(t.pieces[q])}@{q} (text: …{ctx}) IoU {score:.2f}: true "
                   f"[{_top(true[ti][q], t)}] predicted [{_top(prog[ti][q], t)}]")
    return out
