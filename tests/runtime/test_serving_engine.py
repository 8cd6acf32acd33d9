"""Continuous batching (``runtime.serving.engine``): requests of different lengths and settings,
joining and leaving a running batch, each give the tokens of their run alone; cancelled rows free
their place; the rows' caches join, pad and trim without changing what a row computes."""

from __future__ import annotations

import queue
import time

import pytest
import torch
from test_surrogate import TEXTS, make_plan
from test_surrogate_cache import WHOLE_LAYER
from transformers import DynamicCache

from headcode.runtime.model.heads import HeadRef
from headcode.runtime.model.loading import load_model
from headcode.runtime.serving.engine import BatchEngine, EngineSettings
from headcode.runtime.serving.requests import Event, GenerationRequest, Overloaded, Ticket
from headcode.runtime.surrogate.apply import surrogates_applied

# whole layer 0; in layer 1 same-token maps, induction, a ring (shift < 0) and a pending key (shift > 0)
PLAN = {**WHOLE_LAYER,
        HeadRef(1, 0): "def attend(t):\n    return 0.5 * after_last(t, punct) + 0.5 * before_last(t, punct)\n",
        HeadRef(1, 1): "def attend(t):\n    return 0.6 * induction(t) + 0.4 * previous(t, 3)\n"}


def _alone(model, ids: list[int], n: int) -> list[int]:
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0)
    return out[0, x.shape[1]:].tolist()


def _run(engine: BatchEngine, reqs: list[GenerationRequest], gap: float = 0.0) -> list[list[Event]]:
    sinks = [queue.SimpleQueue() for _ in reqs]
    for r, s in zip(reqs, sinks):
        engine.submit(Ticket(r, s.put))
        time.sleep(gap)  # later ones join a batch already decoding
    out = []
    for s in sinks:
        events = [s.get(timeout=120)]
        while events[-1].kind == "token":
            events.append(s.get(timeout=120))
        out.append(events)
    return out


def _tokens(events: list[Event]) -> list[int]:
    return [e.token for e in events if e.kind == "token"]


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return load_model(tiny_llama_dir)


def _engine(lm, handle, **kw) -> BatchEngine:
    new_cache = handle.new_cache if handle is not None else (lambda: DynamicCache(config=lm.model.config))
    e = BatchEngine(lm.model, lambda ids: lm.tokenizer.decode(ids, skip_special_tokens=True), set(),
                    new_cache, EngineSettings(**{"max_batch": 16, **kw}))
    e.start()
    return e


@pytest.mark.parametrize("with_plan", [True, False])
def test_sixteen_requests_joining_a_running_batch_each_equal_their_run_alone(llama, with_plan):
    text = " ".join(TEXTS)
    ids = llama.tokenizer(text)["input_ids"]
    reqs = [GenerationRequest(tuple(ids[: 3 + (11 * i) % 70]), max_tokens=4 + (i * 7) % 13, temperature=0)
            for i in range(16)]
    with surrogates_applied(llama, make_plan(llama, PLAN)) if with_plan else _nothing() as handle:
        engine = _engine(llama, handle)
        got = _run(engine, reqs, gap=0.01)
        engine.drain(10)
        for r, events in zip(reqs, got):
            assert events[-1].kind == "done" and events[-1].finish == "length"
            assert _tokens(events) == _alone(llama.model, list(r.prompt_ids), r.max_tokens)
        assert engine.metrics.peak_bytes > 0 and engine.running == 0


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return None


def test_sampled_rows_repeat_with_their_seed_and_stop_strings_end_a_row(llama):
    ids = tuple(llama.tokenizer(TEXTS[1])["input_ids"])
    with surrogates_applied(llama, make_plan(llama, PLAN)) as handle:
        engine = _engine(llama, handle)
        sampled = [GenerationRequest(ids, 12, temperature=0.9, top_p=0.9, seed=s) for s in (3, 3, 4)]
        greedy = GenerationRequest(ids, 12, temperature=0)
        a, b, c, g = (_tokens(e) for e in _run(engine, sampled + [greedy]))
        assert a == b and a != c
        text = llama.tokenizer.decode(g, skip_special_tokens=True)
        stop = text[len(text) // 2: len(text) // 2 + 2]
        (stopped,) = _run(engine, [GenerationRequest(ids, 12, temperature=0, stop=(stop,))])
        assert stopped[-1].finish == "stop" and len(_tokens(stopped)) < 12
        assert stop in llama.tokenizer.decode(_tokens(stopped)) and _tokens(stopped) == g[:len(_tokens(stopped))]
        engine.drain(10)


def test_a_cancelled_row_leaves_at_once_and_the_queue_refuses_past_its_bound(llama):
    ids = tuple(llama.tokenizer(TEXTS[0])["input_ids"])
    with surrogates_applied(llama, make_plan(llama, PLAN)) as handle:
        engine = _engine(llama, handle, max_batch=1, max_queue=2)
        long = Ticket(GenerationRequest(ids, 400, temperature=0), (first := queue.SimpleQueue()).put)
        engine.submit(long)
        assert first.get(timeout=60).kind == "token"
        waiting = Ticket(GenerationRequest(ids[:5], 3, temperature=0), (second := queue.SimpleQueue()).put)
        engine.submit(waiting)
        with pytest.raises(Overloaded):
            engine.submit(Ticket(GenerationRequest(ids[:5], 3, temperature=0), lambda e: None))
        long.cancel()
        got = [second.get(timeout=60) for _ in range(4)]
        assert [e.kind for e in got] == ["token"] * 3 + ["done"]
        engine.drain(10)
    rest = []
    while not first.empty():
        rest.append(first.get())
    assert rest[-1].finish == "cancelled" and len(rest) < 100  # it left long before its 400 tokens


def _calibrated(lm, plan, scale: float = 0.5):
    """``plan`` with every head calibrated: its own term weights and a random constant output."""
    g = torch.Generator().manual_seed(7)
    return type(plan)(plan.model_id, plan.fingerprint, {
        k: h.calibrated([t.weight for t in h.terms], (torch.randn(lm.head_dim, generator=g) * scale).tolist(), "test")
        for k, h in plan.heads.items()})


def test_a_calibrated_plan_served_batched_equals_greedy_alone(llama):
    """Issue 19's constants in the batched path: every row of a left-padded batch gets each
    calibrated head's constant from its own first real position on, exactly as alone."""
    plan = _calibrated(llama, make_plan(llama, PLAN))
    assert all(any(c != 0 for c in h.constant) for h in plan.heads.values())
    ids = llama.tokenizer(" ".join(TEXTS))["input_ids"]
    reqs = [GenerationRequest(tuple(ids[: 4 + 9 * i]), max_tokens=6 + 3 * i, temperature=0) for i in range(6)]
    with surrogates_applied(llama, make_plan(llama, PLAN)):
        plain = [_alone(llama.model, list(r.prompt_ids), r.max_tokens) for r in reqs]
    with surrogates_applied(llama, plan) as handle:
        engine = _engine(llama, handle)
        got = _run(engine, reqs, gap=0.01)
        engine.drain(10)
        alone = [_alone(llama.model, list(r.prompt_ids), r.max_tokens) for r in reqs]
    assert [_tokens(e) for e in got] == alone
    assert alone != plain  # the constants change what is generated


def test_batched_logits_equal_alone_within_float32_rounding(llama):
    """What the engine does, by hand: two prompts of different lengths prefilled alone, the shorter
    left-padded, joined, then decoded together; each row's logits equal its run alone to 1e-4
    (float32: the batched matmuls and the masked attention over padding sum in another order)."""
    from headcode.runtime.serving import rows as R

    ids = llama.tokenizer(" ".join(TEXTS))["input_ids"]
    prompts, n = [ids[:9], ids[:23]], 8
    with surrogates_applied(llama, make_plan(llama, PLAN)) as handle, torch.no_grad():
        alone, fed = [], []
        for p in prompts:
            x = torch.tensor([p])
            out = llama.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                                       min_new_tokens=n, do_sample=False, pad_token_id=0, output_logits=True,
                                       return_dict_in_generate=True)
            alone.append(torch.stack(out.logits, 1)[0])                                # [n, V]
            fed.append(out.sequences[0, len(p):])  # what generate chose (min_new_tokens may forbid an end)
        caches, first = [], []
        for p in prompts:
            c = handle.new_cache()
            x = torch.tensor([p])
            first.append(llama.model(input_ids=x, attention_mask=torch.ones_like(x), cache=c).logits[0, -1])
            caches.append(c)
        T = len(prompts[1])
        R.pad_left(caches[0], T - len(prompts[0]))
        R.join(caches[0], caches[1])
        batch, starts = caches[0], torch.tensor([T - len(prompts[0]), 0])
        R.set_starts(batch, starts.tolist())
        got = [torch.stack(first)]
        for step in range(n - 1):
            nxt = torch.stack([fed[0][step], fed[1][step]])[:, None]
            mask = (torch.arange(T + step + 1)[None] >= starts[:, None]).long()
            got.append(llama.model(input_ids=nxt, attention_mask=mask, position_ids=(T + step - starts)[:, None],
                                   cache=batch).logits[:, -1])
        got = torch.stack(got, 1)                                                      # [2, n, V]
    for b in range(2):
        torch.testing.assert_close(got[b], alone[b], rtol=0, atol=1e-4)
