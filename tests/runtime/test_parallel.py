"""What an executor returns equals the local run to the last digit: a loss or QA score measured in
shards of batches (as ``headcode.cluster.evaluate`` sends them to workers) and added up in the local
order is ``token_loss``/``choice_logprobs``; the local executor's set losses are ``BasePrefix``'s."""

from __future__ import annotations

import numpy as np

from headcode.runtime.evaluation.measures import (
    Loss,
    Question,
    batch_logprobs,
    choice_logprobs,
    choice_scores,
    item_batches,
    item_logprobs,
    token_loss,
)
from headcode.runtime.evaluation.parallel import LOCAL
from headcode.runtime.evaluation.prefix import BasePrefix
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.model.loading import load_model
from headcode.runtime.surrogate.replacements import FirstTokenHead, UniformHead
from tests.runtime.test_evaluate import PARAGRAPHS


def _texts(lm) -> list[np.ndarray]:
    return [np.asarray(lm.tokenizer(p)["input_ids"]) for p in PARAGRAPHS * 2] + [np.asarray([5])]


def test_losses_in_shards_add_up_to_the_local_loss(tiny_llama_dir):
    lm = load_model(tiny_llama_dir)
    texts = _texts(lm)
    whole = token_loss(lm.model, texts, lm.tokenizer, batch_size=3)
    n = len(batch_logprobs(lm.model, texts, lm.tokenizer, 3))
    assert n > 2
    shards = [[0, 1], list(range(2, n))]  # two workers' pieces
    parts = [p for s in shards for p in batch_logprobs(lm.model, texts, lm.tokenizer, 3, s)]
    assert Loss.of(parts) == whole and whole.n_tokens == sum(len(t) - 1 for t in texts if len(t) > 1)


def test_qa_scores_in_shards_equal_the_local_scores(tiny_llama_dir):
    lm = load_model(tiny_llama_dir)
    enc = lambda s, sp=False: np.asarray(lm.tokenizer(s, add_special_tokens=sp)["input_ids"])  # noqa: E731
    qs = [Question("t", i, enc(p[:30]), (enc(" red ball"), enc(" dog"), enc(p[30:50])), (9, 4, 20), gold=1)
          for i, p in enumerate(PARAGRAPHS)]
    whole = choice_logprobs(lm.model, qs, lm.tokenizer, batch_size=4)
    n = item_batches(qs, 4)
    merged = {**item_logprobs(lm.model, qs, lm.tokenizer, 4, [0]), **item_logprobs(lm.model, qs, lm.tokenizer, 4,
                                                                                    list(range(1, n)))}
    assert n > 1 and all((a == b).all() for a, b in zip(choice_scores(qs, merged), whole))


def test_local_set_losses_are_the_base_prefix_losses(tiny_llama_dir):
    lm = load_model(tiny_llama_dir)
    texts = _texts(lm)[:4]
    heads = {HeadRef(1, 0): FirstTokenHead(), HeadRef(0, 2): UniformHead()}
    sets = [[], [HeadRef(1, 0)], [HeadRef(1, 0), HeadRef(0, 2)]]
    got = LOCAL.set_losses(lm, heads, texts, 2)(sets, False)
    prefix = BasePrefix(lm, texts, 2)
    assert got == [prefix.mean_loss({h: heads[h] for h in s}) for s in sets]
    assert got[0] == token_loss(lm.model, texts, lm.tokenizer, 2).mean and got[2] != got[0]
