"""Integer preparation for the GPU path, in torch: per-term key indices and scan inputs.

Everything here is O(T) integer work per row (cummax, one stable sort); the O(T * D) value
work is left to the Triton kernels. ``ids [B, T] int64, start [B] int64``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from headcode.kernels.program_head import spec as S
from headcode.kernels.program_head.naive import latest
from headcode.kernels.program_head.spec import HeadSpec


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

    def events(self, i: int) -> torch.Tensor:
        """``[B, T]`` bool: where term ``i`` has an event (``spec``'s definition); shared by terms
        with the same (ev_tab, ev_lag, ev_start)."""
        sp = self.spec
        tab, lag, first = int(sp.ev_tab[i]), int(sp.ev_lag[i]), bool(sp.ev_start[i])
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

    def gather_index(self, i: int) -> torch.Tensor:
        """Term ``i`` (POINTER or INDUCTION): ``[B, T]`` index of its one key, -1 for an empty row."""
        sp, kind = self.spec, int(self.spec.kinds[i])
        if kind == S.POINTER:
            p = latest(self.events(i), bool(sp.strict[i]))
            idx = torch.where(p >= 0, p + int(sp.shift[i]), -1)
        elif kind == S.INDUCTION:
            prev = self.occurrences()[2]
            idx = torch.where(prev >= 0, prev + 1, prev)
        else:
            raise ValueError(f"kind code {kind} is not a one-key primitive (pointer, induction)")
        ok = (idx >= self.start[:, None]) & (idx <= self.pos) & self.valid
        keys_ok = self.table(int(sp.key_tab[i])).gather(1, idx.clamp(min=0, max=self.ids.shape[1] - 1))
        return torch.where(ok & keys_ok, idx, torch.full_like(idx, -1))

    def scan_input(self, i: int) -> ScanInput:
        """Term ``i`` (SCAN or SAME_TOKEN) as a segmented, decayed scan over some row order."""
        sp, kind = self.spec, int(self.spec.kinds[i])
        keys = self.valid & self.table(int(sp.key_tab[i]))
        if kind == S.SCAN:
            return ScanInput(self.pos, keys, self.events(i), float(sp.rates[i]))
        if kind == S.SAME_TOKEN:
            perm, gb, _ = self.occurrences()
            return ScanInput(perm, keys.gather(1, perm), gb, 1.0)
        raise ValueError(f"kind code {kind} is not a scanned primitive (scan, same_token)")
