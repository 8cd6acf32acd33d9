"""Issue 19, items 3 and 6: heads are chosen with warm constants (each head's mean residual), the
loss estimates see a head's constant, and measured losses replay the base model's residual stream
below the first replaced layer without changing a number."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_calibration import SRC, SRC2, _texts
from test_surrogate import make_plan

from headcode.compiler.head import SurrogatePlan
from headcode.compiler.tokens import Tokens
from headcode.runtime.calibration.warm import mean_residuals, warm_plan
from headcode.runtime.evaluation.measures import head_output_means
from headcode.runtime.evaluation.prefix import BasePrefix
from headcode.runtime.evaluation.selection import estimate_effects, loss_with
from headcode.runtime.evaluation.settings import RankSettings
from headcode.runtime.model.capture import capture
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.model.loading import load_model
from headcode.runtime.surrogate.apply import build_surrogates
from headcode.runtime.surrogate.replacements import MeanHead, pattern_heads


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    return load_model(tiny_llama_dir)


def test_the_mean_residual_of_a_zero_head_is_its_mean_output_and_of_the_exact_head_zero(lm):
    texts = _texts(lm, 5, 11, T=20) + _texts(lm, 2, 12, T=9)  # two lengths: right padding is masked
    heads = [HeadRef(0, 1), HeadRef(1, 2)]
    zero = {h: MeanHead(torch.zeros(lm.head_dim)) for h in heads}
    got = mean_residuals(lm, zero, texts, batch_size=3)
    means = head_output_means(lm, texts, batch_size=3)
    for h in heads:
        torch.testing.assert_close(got[h], means[h.layer, h.head].double(), rtol=1e-4, atol=1e-5)
    toks = [Tokens.from_ids(lm.tokenizer, t) for t in texts]
    exact = pattern_heads(capture(lm, toks, heads=heads, progress=False))
    for h, r in mean_residuals(lm, exact, texts, batch_size=3).items():
        assert r.abs().max() < 1e-4 * means[h.layer, h.head].abs().max() + 1e-6


def test_a_warm_plan_takes_its_constants_off_the_residual(lm):
    """With its warm constant, a head's mean residual is zero; the explanation is unchanged."""
    plan = make_plan(lm, {HeadRef(0, 1): SRC, HeadRef(1, 2): SRC2})
    fit = _texts(lm, 6, 13, T=18)
    warm = warm_plan(lm, plan, fit, batch_size=4)
    before = mean_residuals(lm, build_surrogates(plan, lm), fit, batch_size=4)
    after = mean_residuals(lm, build_surrogates(warm, lm), fit, batch_size=4)
    for k, h in warm.heads.items():
        ref = HeadRef.parse(k)
        np.testing.assert_allclose(h.constant, before[ref].numpy(), rtol=1e-6, atol=1e-9)
        assert after[ref].abs().max() < 1e-5 * before[ref].abs().max() + 1e-7
        assert h.terms == plan.heads[k].terms and h.surrogate.weights == tuple(t.weight for t in h.terms)
    assert warm_plan(lm, warm, fit).heads == warm.heads  # a head with a surrogate is kept as it is


def test_the_loss_estimate_sees_a_heads_constant(lm):
    """The estimate of one head on top of a calibrated one equals that with the constant added by hand."""
    plan = make_plan(lm, {HeadRef(0, 1): SRC, HeadRef(1, 2): SRC2})
    g = torch.Generator().manual_seed(4)
    c = (torch.randn(lm.head_dim, generator=g) * 2).tolist()
    cal = SurrogatePlan(plan.model_id, plan.fingerprint,
                        {"L0.H1": plan.heads["L0.H1"].calibrated([0.7, 0.3], c, "test")})
    fixed = build_surrogates(cal, lm)[HeadRef(0, 1)]
    plain = build_surrogates(plan, lm)[HeadRef(0, 1)]

    def by_hand(ids, v, start, n_q):
        return plain(ids, v, start, n_q) + torch.tensor(c, dtype=v.dtype)

    texts = _texts(lm, 4, 14, T=16)
    cand = {HeadRef(1, 2): build_surrogates(plan, lm)[HeadRef(1, 2)]}
    want = estimate_effects(lm, cand, texts, fixed={HeadRef(0, 1): by_hand})
    got = estimate_effects(lm, cand, texts, fixed={HeadRef(0, 1): fixed})
    without = estimate_effects(lm, cand, texts, fixed={HeadRef(0, 1): plain})
    assert got[HeadRef(1, 2)] == pytest.approx(want[HeadRef(1, 2)], rel=1e-4, abs=1e-7)
    assert abs(without[HeadRef(1, 2)] - want[HeadRef(1, 2)]) > 1e-5


@pytest.mark.parametrize("model", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_replaying_the_base_prefix_gives_the_same_losses(model, request):
    lm = load_model(request.getfixturevalue(model))
    texts = _texts(lm, 5, 15, T=20) + _texts(lm, 2, 16, T=11)
    prefix = BasePrefix(lm, texts, batch_size=3)
    last = lm.n_layers - 1
    means = head_output_means(lm, texts)
    for heads in ([], [HeadRef(last, 0)], [HeadRef(last, 0), HeadRef(last, 1)], [HeadRef(0, 0), HeadRef(last, 0)]):
        fns = {h: MeanHead(means[h.layer, h.head] * 3) for h in heads}
        assert prefix.mean_loss(fns) == pytest.approx(loss_with(lm, fns, texts, batch_size=3), rel=1e-5)
    assert prefix.mean_loss({HeadRef(last, 0): MeanHead(means[last, 0] * 3)}) != pytest.approx(prefix.mean_loss({}))
    calls = []
    hook = prefix.blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        prefix.mean_loss({HeadRef(last, 0): MeanHead(means[last, 0])})
        assert not calls  # the layers below the first replaced one did not run
        prefix.mean_loss({HeadRef(0, 0): MeanHead(means[0, 0])})
        assert calls
    finally:
        hook.remove()


def test_select_with_warm_constants_keeps_them_in_the_plan(lm):
    from headcode.errors import HeadcodeError
    from headcode.runtime.evaluation.select_plan import SelectSettings, select_plan

    plan = make_plan(lm, {HeadRef(0, 1): SRC, HeadRef(1, 2): SRC2, HeadRef(1, 0): SRC})
    fit, select = _texts(lm, 4, 17, T=16), _texts(lm, 3, 18, T=16)
    s = SelectSettings(fraction=0.25, warm=True, rank=RankSettings(measure_texts=2, rounds=1), progress=False)
    sel = select_plan(lm, plan, select, s, fit)
    warm = warm_plan(lm, plan, fit)
    assert len(sel.heads) == 2 and "warm" in sel.report["selection"]["heads_ran_as"]
    for k, h in sel.plan.heads.items():
        np.testing.assert_allclose(h.constant, warm.heads[k].constant, rtol=1e-9, atol=1e-12)
        assert h.surrogate.weights == warm.heads[k].surrogate.weights
    with pytest.raises(HeadcodeError, match="fit texts"):
        select_plan(lm, plan, select, s)
