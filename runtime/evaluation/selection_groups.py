"""Choosing whole KV groups to replace, and what that saves in the KV cache.

A KV group is one key/value head and the query heads that share it (grouped-query attention;
in a model without GQA every head is its own group). When every query head of a group is
replaced by a program, the group needs no keys or values at all: its share of the KV cache
goes (docs/architecture.md, semantics 8). Groups are ranked like heads (``runtime.evaluation.selection``): the
first-order loss change of a group is the sum of its heads' estimates (one backward pass for
all of them), then the best candidates' loss increase is measured exactly, in rounds on top of
the groups already chosen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from headcode.errors import HeadcodeError
from headcode.runtime.evaluation.selection import choose_in_rounds, select_texts_for_ranking
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.surrogate.replacements import HeadFn


@dataclass(frozen=True, order=True)
class KVGroup:
    layer: int
    kv: int
    heads: tuple[HeadRef, ...]

    def __str__(self) -> str:
        return f"L{self.layer}.KV{self.kv}"


def kv_groups(heads: Iterable[HeadRef], n_heads: int, n_kv_heads: int) -> list[KVGroup]:
    """The KV groups all of whose query heads are in ``heads``."""
    have = set(heads)
    size = n_heads // n_kv_heads
    out = []
    for layer in sorted({h.layer for h in have}):
        for kv in range(n_kv_heads):
            members = tuple(HeadRef(layer, kv * size + i) for i in range(size))
            if all(m in have for m in members):
                out.append(KVGroup(layer, kv, members))
    return out


@dataclass(frozen=True)
class CacheSaving:
    """KV-cache bytes per token of the base model, and those no longer kept with ``groups`` replaced."""

    base_bytes_per_token: int
    saved_bytes_per_token: int
    groups: int

    @property
    def share(self) -> float:
        return self.saved_bytes_per_token / max(self.base_bytes_per_token, 1)

    def to_json(self) -> dict[str, Any]:
        return {"base_bytes_per_token": self.base_bytes_per_token, "saved_bytes_per_token": self.saved_bytes_per_token,
                "saved_share": self.share, "whole_groups_replaced": self.groups}


def cache_saving(loaded: Any, heads: Iterable[HeadRef]) -> CacheSaving:
    """Per token, every layer caches a key and a value vector per KV group; a group whose query
    heads are all in ``heads`` caches neither."""
    param = next(loaded.model.parameters())
    per_group = 2 * loaded.head_dim * param.element_size()
    groups = kv_groups(heads, loaded.n_heads, loaded.n_kv_heads)
    return CacheSaving(loaded.n_layers * loaded.n_kv_heads * per_group, len(groups) * per_group, len(groups))


@dataclass(frozen=True)
class GroupRanking:
    """The groups chosen, best first; ``measured[g]``: loss increase (nats/token) when ``g`` was
    added to the groups chosen before its round."""

    groups: tuple[KVGroup, ...]
    measured: dict[KVGroup, float]
    estimate: dict[KVGroup, float]
    base_loss: float
    method: str

    @property
    def heads(self) -> tuple[HeadRef, ...]:
        return tuple(h for g in self.groups for h in g.heads)


def rank_groups(loaded: Any, heads: Mapping[HeadRef, HeadFn], texts: Sequence[np.ndarray], budget: int,
                n_measure: int, measure_texts: int = 8, measure_tokens: int = 128, batch_size: int = 8,
                progress: bool = False, rounds: int = 1, executor: Any = None) -> GroupRanking:
    """Choose ``budget`` whole KV groups among those ``heads`` complete, by their effect on the loss
    over ``texts`` (the select split); ``n_measure`` groups are measured exactly over all rounds
    (through ``executor``, as ``rank_heads``)."""
    groups = kv_groups(heads, loaded.n_heads, loaded.n_kv_heads)
    if not groups:
        raise HeadcodeError("no KV group has programs for all its query heads in this plan: compile every "
                            "head of a group, or choose heads without --whole-groups")
    texts, sub = select_texts_for_ranking(texts, measure_texts, measure_tokens)
    budget = max(0, min(budget, len(groups)))
    rounds = max(1, min(rounds, budget or 1))
    n_measure = max(n_measure, budget)
    chosen, measured, est, base_loss = choose_in_rounds(loaded, heads, {g: g.heads for g in groups}, texts, sub,
                                                        budget, n_measure, rounds, batch_size, progress,
                                                        executor)
    method = (f"whole KV groups, {rounds} round(s), each: first-order loss change of every remaining group "
              "(the sum of its heads') on top of the groups already chosen (select split), then the loss "
              f"increase measured for the best candidates ({len(measured)} groups measured in all)")
    return GroupRanking(tuple(chosen), measured, est, base_loss, method)
