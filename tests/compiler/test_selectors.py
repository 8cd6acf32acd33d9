"""The selector matrix, generated from the registries (``compiler/selectors/`` and
``kernels.program_head.backends``): every example of every selector is traced, compiled, and run
by every backend (the dense torch reference, Numba, Triton -- interpreter without a GPU), over the
whole sequence and through the backend's decoding state from zero (a prefill, then one token per
step), each against the selector's own numpy reference -- with left padding and on two texts; its
English names its phrase. A toy selector registered here runs through the same matrix from its
one definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from catalogue import VOCAB, random_ids

from headcode.compiler import classes, english, ir, run_head
from headcode.compiler.compile import compile_in_process
from headcode.compiler.pattern import Pattern, attention_from_scores, causal, evaluate
from headcode.compiler.program import Program, namespace
from headcode.compiler.program_to_ir import flatten
from headcode.compiler.selectors import REGISTRY, Selector, registered
from headcode.compiler.tokens import Tokens
from headcode.kernels.program_head import backends
from headcode.kernels.program_head.spec import Scan
from headcode.kernels.program_head.stream import LayerProgram

BACKENDS = backends.names()  # every registered backend: prefill, and decoding from a zero state


def selector_cases() -> list[tuple[str, int]]:
    """``(kind, example index)`` for every example of every registered selector."""
    return [(kind, i) for kind, sel in REGISTRY.items() for i in range(len(sel.examples))]


def _tokens(ids: np.ndarray) -> Tokens:
    return Tokens.synthetic([VOCAB[i] for i in ids], [int(i) for i in ids])


def _decode(backend: str, head, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor,
            prefill: int = 9) -> torch.Tensor:
    """``ids [1, T], v [1, T, D]`` through ``backend``'s decoding state from zero: ``prefill``
    tokens, then one per step."""
    b, prog = backends.get(backend), LayerProgram.build([head.spec], [0])
    state, outs = b.zero_state(prog, 1, v.shape[-1], "cpu"), []
    for lo, hi in zip([0, *range(prefill, ids.shape[1])], range(prefill, ids.shape[1] + 1)):
        out, state = b.step(prog, state, ids[:, lo:hi], v[:, None, lo:hi].float(), start)
        outs.append(out.cpu())
    return torch.cat(outs, 2)[:, 0]


def check_example(kind: str, i: int) -> None:
    """Example ``i`` of selector ``kind``: uses that selector; compiled through every backend it
    equals the reference attention times V (also behind left padding); English names it."""
    body = REGISTRY[kind].examples[i]
    prog = Program.from_source(f"def attend(t):\n    return {body}\n", name=f"{kind}-{i}")
    expr = prog.trace()
    sels = [s for _, s in flatten(expr) if isinstance(s, ir.Sel) and s.kind == kind]
    assert sels, f"example {body!r} does not use selector {kind}"
    assert REGISTRY[kind].phrase(sels[0]) in english.describe(expr)
    head = compile_in_process(prog, VOCAB, "synthetic-vocab", strict=True)
    rng = np.random.default_rng(i)
    for T, pad in ((48, 0), (40, 5)):
        ids = random_ids(rng, T)
        v = torch.randn(T, 6, generator=torch.Generator().manual_seed(T), dtype=torch.float64)
        want = torch.from_numpy(attention_from_scores(evaluate(expr, _tokens(ids)))) @ v
        padded = torch.cat([torch.zeros(pad, dtype=torch.long), torch.from_numpy(ids)])[None]
        vp = torch.cat([torch.randn(pad, 6, dtype=torch.float64), v])[None]
        for backend in BACKENDS:
            got = run_head(head, padded, vp if backend != "triton" else vp.float(), torch.tensor([pad]),
                           backend=backend)[0, pad:]
            torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0, msg=f"{backend}: {body}")
        for backend in BACKENDS:
            got = _decode(backend, head, padded, vp, torch.tensor([pad]))[0, pad:]
            torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0, msg=f"decode {backend}: {body}")


@pytest.mark.parametrize("kind, i", selector_cases(), ids=[f"{k}-{i}" for k, i in selector_cases()])
def test_selector_example_matches_reference_in_every_backend(kind, i):
    check_example(kind, i)


@pytest.mark.parametrize("kind", list(REGISTRY))
def test_every_selector_has_examples_that_use_each_of_its_functions(kind):
    sel = REGISTRY[kind]
    assert sel.examples, f"selector {kind} has no examples: the matrix cannot test it"
    for fn in sel.functions:
        assert any(f"{fn.__name__}(" in ex for ex in sel.examples), f"no example of {kind} calls {fn.__name__}"
        assert namespace()[fn.__name__] is fn or fn.__name__ == "word_start"  # word_start doubles as a class


# a toy selector, defined once here: decayed recency within the query's clause ---------------
def recent_in_clause(t, rate: float = 0.7) -> Pattern:
    """Recent tokens of the query's clause, weighted ``rate ** (q - k)``."""
    return Pattern(ir.Sel("toy_recent_in_clause", rate=float(rate), aux=classes.clause_boundary), t)


def _toy_reference(s, t) -> np.ndarray:
    begin = np.r_[True, t.has(s.aux)[:-1]] if len(t) else np.zeros(0, bool)
    clause = np.cumsum(begin)
    ar = np.arange(len(t))
    same = causal(len(t)) & (clause[None, :] == clause[:, None])
    return np.where(same, s.rate ** np.maximum(ar[:, None] - ar[None, :], 0), 0.0)


TOY = Selector(
    kind="toy_recent_in_clause", meaning="recent keys of the query's clause", functions=(recent_in_clause,),
    reference=_toy_reference, params=("rate",), needs_aux=True, key_words="that are",
    lower=lambda s: Scan(ev_tab=s.aux_table, ev_lag=1, ev_start=True, rate=s.rate),
    phrase=lambda s: f"recent tokens of the clause (decay {s.rate:g})",
    examples=("recent_in_clause(t, 0.7)", "when(noun_like, recent_in_clause(t, 0.5)) + 0.2 * first(t)"),
)


def test_a_toy_selector_registers_everywhere_from_its_one_definition():
    assert TOY.kind not in {k for k, _ in selector_cases()}
    assert "recent_in_clause" not in namespace()
    with registered(TOY):
        assert namespace()["recent_in_clause"] is recent_in_clause
        cases = [c for c in selector_cases() if c[0] == TOY.kind]
        assert len(cases) == len(TOY.examples)
        for kind, i in cases:
            check_example(kind, i)
    assert TOY.kind not in REGISTRY and "recent_in_clause" not in namespace()


def test_a_selector_is_registered_once():
    with pytest.raises(ValueError, match="already registered"):
        with registered(REGISTRY["first"]):
            pass
    assert "first" in REGISTRY
