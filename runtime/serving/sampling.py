"""Choosing the next token of one row from its logits, with that request's settings."""

from __future__ import annotations

import torch

from headcode.runtime.serving.requests import GenerationRequest


def row_generator(req: GenerationRequest) -> torch.Generator | None:
    """The random stream of one sampled request (seeded: the same seed gives the same text)."""
    if req.temperature == 0:
        return None
    g = torch.Generator()
    if req.seed is not None:
        g.manual_seed(req.seed)
    else:
        g.seed()
    return g


def choose(logits: torch.Tensor, req: GenerationRequest, gen: torch.Generator | None) -> int:
    """``logits [V]`` -> a token id: greedy at temperature 0, else nucleus sampling (``top_p``) at
    ``temperature`` (the same filter as transformers' ``TopPLogitsWarper``: keep the smallest set of
    most likely tokens whose mass reaches ``top_p``)."""
    x = logits.float()
    if gen is None or req.temperature == 0:
        return int(torch.argmax(x))
    x = x / req.temperature
    if req.top_p < 1.0:
        sorted_x, order = torch.sort(x, descending=False)
        mass = sorted_x.softmax(-1).cumsum(-1)
        drop = mass <= 1 - req.top_p
        drop[-1] = False  # the most likely token always stays
        x = x.scatter(0, order[drop], float("-inf"))
    return int(torch.multinomial(x.softmax(-1), 1, generator=gen))
