"""Integer preparation for the GPU path, in torch: per-term key indices and scan inputs.

Everything here is O(T) integer work per row (cummax, one stable sort); the O(T * D) value
work is left to the Triton kernels. ``ids [B, T] int64, start [B] int64``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from headcode.kernels.program_head import spec as S
from headcode.kernels.program_head.naive import anchor
from headcode.kernels.program_head.spec import HeadSpec, KernelTerm


@dataclass(frozen=True)
class ScanInput:
    """Inputs of one scan term: ``rows [B, T]`` (the order to sweep, as row indices into V),
    ``mask [B, T]`` (which swept rows are keys), ``begin [B, T]`` (a segment starts: sum resets),
    ``rate`` (decay per step; 1.0 = plain running sum)."""

    rows: torch.Tensor
    mask: torch.Tensor
    begin: torch.Tensor
    rate: float


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def device_tables(spec: HeadSpec, device: torch.device) -> torch.Tensor:
    """``[n_tables, vocab + 1]`` bool on ``device`` (a zero column last), copied once per spec and device."""
    per = _TABLES.setdefault(spec, {})
    if str(device) not in per:
        t = torch.zeros(spec.tables.shape[0], spec.vocab_size + 1, dtype=torch.bool)
        t[:, : spec.vocab_size] = torch.as_tensor(spec.tables).bool()
        per[str(device)] = t.to(device)
    return per[str(device)]


class Prep:
    """Shared per-call integer features, computed lazily once for all terms of a head."""

    def __init__(self, spec: HeadSpec, ids: torch.Tensor, start: torch.Tensor):
        self.spec, self.ids, self.start = spec, ids, start
        B, T = ids.shape
        self.pos = torch.arange(T, device=ids.device).expand(B, T)
        self.valid = self.pos >= start[:, None]
        self.tables = device_tables(spec, ids.device)
        self.tids = ids.clamp(min=0, max=spec.vocab_size)  # an id past the vocabulary reads the zero column
        self._cache: dict[str, torch.Tensor] = {}

    def table(self, row: int) -> torch.Tensor:
        """``[B, T]`` bool: table ``row`` at each token (all True for row -1)."""
        if row < 0:
            return torch.ones_like(self.valid)
        return self.tables[row][self.tids]

    def events(self, p: S.Pointer | S.Scan) -> torch.Tensor:
        """``[B, T]`` bool: where ``p`` has an event (``spec``'s definition); shared by terms
        with the same (ev_tab, ev_lag, ev_start)."""
        tab, lag, first = int(p.ev_tab), int(p.ev_lag), bool(p.ev_start)
        key = f"ev{tab},{lag},{first}"
        if key not in self._cache:
            ev = self.valid & (self.pos == self.start[:, None]) & first
            if tab == S.EVERY:
                ev = self.valid
            elif tab >= 0:
                T = self.ids.shape[1]
                hit = torch.zeros_like(self.valid)
                hit[:, lag:] = self.table(tab)[:, : T - lag]
                ev = ev | (hit & (self.pos - lag >= self.start[:, None]))
            self._cache[key] = ev
        return self._cache[key]

    def occurrences(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stable sort by token (padding grouped apart): ``perm``, ``group_begin`` (in sorted
        order) and ``prev [B, T]`` (the previous occurrence of each position's token, or -1)."""
        if "perm" not in self._cache:
            key = torch.where(self.valid, self.ids, torch.full_like(self.ids, -1))
            skey, perm = torch.sort(key, dim=1, stable=True)
            gb = torch.ones_like(self.valid)
            gb[:, 1:] = skey[:, 1:] != skey[:, :-1]
            prev_sorted = torch.cat([torch.full_like(perm[:, :1], -1), perm[:, :-1]], dim=1)
            prev_sorted = torch.where(gb, torch.full_like(perm, -1), prev_sorted)
            prev = torch.empty_like(perm).scatter_(1, perm, prev_sorted)
            self._cache.update(perm=perm, gb=gb, prev=prev)
        return self._cache["perm"], self._cache["gb"], self._cache["prev"]

    def gather_index(self, t: KernelTerm) -> torch.Tensor:
        """``t`` (a one-key primitive: pointer, induction): ``[B, T]`` index of its key, -1 for an empty row."""
        idx = S.by_type(KEY_INDEX, t.prim)(t.prim, self)
        ok = (idx >= self.start[:, None]) & (idx <= self.pos) & self.valid
        keys_ok = self.table(int(t.key_tab)).gather(1, idx.clamp(min=0, max=self.ids.shape[1] - 1))
        return torch.where(ok & keys_ok, idx, torch.full_like(idx, -1))

    def scan_input(self, t: KernelTerm) -> ScanInput:
        """``t`` (a scanned primitive: scan, same_token) as a segmented, decayed scan over some row order."""
        keys = self.valid & self.table(int(t.key_tab))
        if isinstance(t.prim, S.Scan):
            return ScanInput(self.pos, keys, self.events(t.prim), float(t.prim.rate))
        if isinstance(t.prim, S.SameToken):
            perm, gb, _ = self.occurrences()
            return ScanInput(perm, keys.gather(1, perm), gb, 1.0)
        raise ValueError(f"{type(t.prim).__name__} is not a scanned primitive (scan, same_token)")


def _pointer_index(p: S.Pointer, prep: Prep) -> torch.Tensor:
    a = anchor(p, prep.events(p))
    return torch.where(a >= 0, a + int(p.shift), -1)


def _induction_index(p: S.Induction, prep: Prep) -> torch.Tensor:
    prev = prep.occurrences()[2]
    return torch.where(prev >= 0, prev + 1, prev)


# the one-key primitives: ``[B, T]`` key before the range, key-class and padding checks (``spec.by_type``)
KEY_INDEX: dict[type, Callable[..., torch.Tensor]] = {S.Pointer: _pointer_index, S.Induction: _induction_index}
