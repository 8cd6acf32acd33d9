"""Decoding states: all replaced heads of one layer as one program of primitive terms, and the
state that program carries from token to token (see ``stream_cpu`` for what each term keeps).

    prog = LayerProgram.build([spec_a, spec_b], groups=[1, 1])   # once per plan and layer
    state = LayerState(prog, batch=B, dim=D)                       # once per sequence batch
    out = state.step(ids [B, n], v [B, G, n, D], start [B])        # -> [B, H, n, D]

``step`` continues the sequence: its first token is at position ``state.length``. Every state
tensor has the batch first, so beam search reorders them all with one ``index_select``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from headcode.kernels.program_head import spec as S
from headcode.kernels.program_head.spec import HeadSpec
from headcode.kernels.program_head.stream_cpu import (
    MAP,
    N_FCOLS,
    N_ICOLS,
    RING,
    STATE_OF_KIND,
    rehash,
    run_stream,
)


def _ready(t: torch.Tensor) -> bool:
    """A CPU int64 contiguous tensor without grad: its numpy view can go to the kernel as is."""
    return t.device.type == "cpu" and t.dtype == torch.long and t.is_contiguous() and not t.requires_grad


def _i64(x: list) -> np.ndarray:
    return np.asarray(x, dtype=np.int64).reshape(-1)


_SHIFTED = ("ev_tab", "key_tab", "query_tab")  # table rows, renumbered into the layer's tables


@dataclass(frozen=True, eq=False)
class LayerProgram:
    """The terms of ``H`` heads flattened into one ``HeadSpec`` (``terms``: tables concatenated, each
    term's table rows renumbered into them): ``head[j]`` owns term ``j``, ``slot[j]`` is its row in
    the state arrays of its kind, ``rslot[j]`` its ring (a pointer with shift < 0; else -1);
    ``group[h]`` is the KV group whose values head ``h`` reads. ``pc``/``pf``: the term columns
    packed for the kernels (``stream_cpu``)."""

    terms: HeadSpec
    head: np.ndarray
    slot: np.ndarray
    rslot: np.ndarray
    group: np.ndarray
    counts: tuple[int, int, int, int]   # terms with ACC, VEC, RING, MAP state
    ring_len: int

    @property
    def tables(self) -> np.ndarray:
        return self.terms.tables

    @property
    def n_heads(self) -> int:
        return int(self.group.shape[0])

    @cached_property
    def pc(self) -> np.ndarray:
        """``[J, N_ICOLS]`` int64: the integer columns in ``stream_cpu``'s order."""
        t = self.terms
        cols = (t.kinds, t.ev_tab, t.ev_lag, t.ev_start, t.strict, t.shift, t.key_tab, t.query_tab, self.head,
                self.slot, self.rslot)
        return np.ascontiguousarray(np.stack(cols, axis=1).reshape(-1, N_ICOLS), dtype=np.int64)

    @cached_property
    def pf(self) -> np.ndarray:
        """``[J, N_FCOLS]`` float64: rates and weights."""
        return np.ascontiguousarray(np.stack([self.terms.rates, self.terms.weights], axis=1).reshape(-1, N_FCOLS))

    @classmethod
    def build(cls, specs: Sequence[HeadSpec], groups: Sequence[int], vocab: int = 0) -> LayerProgram:
        """``vocab``: the model's vocabulary size; tables are zero-padded to it (a token id a head was
        not compiled for satisfies none of its predicates)."""
        names = ("kinds", "ev_tab", "ev_lag", "ev_start", "strict", "shift", "rates", "key_tab", "query_tab",
                 "weights")
        cols: dict[str, list] = {k: [] for k in (*names, "head", "slot", "rslot")}
        counts = [0, 0, 0, 0]
        tabs, off, ring_len = [], 0, 1
        vocab = max([vocab, 1] + [sp.vocab_size for sp in specs])
        for h, sp in enumerate(specs):
            for i in range(sp.n_terms):
                st = STATE_OF_KIND[int(sp.kinds[i])]
                cols["slot"].append(counts[st])
                counts[st] += 1
                rslot = -1
                if sp.kinds[i] == S.POINTER and sp.shift[i] < 0:
                    rslot, counts[RING] = counts[RING], counts[RING] + 1
                    ring_len = max(ring_len, 1 - int(sp.shift[i]))
                cols["rslot"].append(rslot)
                cols["head"].append(h)
                for name in names:
                    val = getattr(sp, name)[i]
                    cols[name].append(val + off if name in _SHIFTED and val >= 0 else val)
            t = np.zeros((sp.tables.shape[0], vocab), np.uint8)
            t[:, : sp.vocab_size] = sp.tables
            tabs.append(t)
            off += sp.tables.shape[0]
        tables = np.concatenate(tabs) if off else np.zeros((1, vocab), np.uint8)
        arrs = {k: np.asarray(v, np.float64 if k in ("rates", "weights") else np.int64).reshape(-1)
                for k, v in cols.items()}
        terms = HeadSpec(**{k: arrs.pop(k) for k in names}, tables=np.ascontiguousarray(tables))
        return cls(terms=terms, **arrs, group=_i64(groups), counts=(counts[0], counts[1], counts[2], counts[3]),
                   ring_len=ring_len)


class LayerState:
    """The selector states of one layer's replaced heads for a batch of sequences (torch CPU
    tensors, batch first; float64 accumulators, float32 per-token map rows -- the size of a
    cached value row). ``work [B]`` counts state elements touched."""

    BATCH_FIRST = ("prev_id", "first_v", "acc", "cnt", "vec", "vok", "pend", "ring", "rok", "hkey", "hent",
                   "hval", "hcnt", "hused", "work")

    def __init__(self, prog: LayerProgram, batch: int, dim: int):
        self.prog, self.length = prog, 0
        n_acc, n_vec, n_ring, n_map = prog.counts
        H, B, D, f64 = prog.n_heads, batch, dim, torch.float64
        self.prev_id = torch.full((B,), -1, dtype=torch.long)
        self.first_v = torch.zeros(B, H, D, dtype=f64)
        self.acc, self.cnt = torch.zeros(B, n_acc, D, dtype=f64), torch.zeros(B, n_acc, dtype=f64)
        self.vec, self.vok = torch.zeros(B, n_vec, D, dtype=f64), torch.zeros(B, n_vec, dtype=torch.int8)
        self.pend = torch.full((B, n_vec), -1, dtype=torch.long)  # a pointer's pending key (shift > 0)
        self.ring = torch.zeros(B, n_ring, prog.ring_len, D, dtype=f64)
        self.rok = torch.zeros(B, n_ring, prog.ring_len, dtype=torch.int8)
        self.hkey = torch.full((B, n_map, 1), -1, dtype=torch.long)
        self.hent = torch.zeros(B, n_map, 1, dtype=torch.int32)
        self.hval = torch.zeros(B, n_map, 0, D, dtype=torch.float32)  # one value row per distinct token
        self.hcnt = torch.zeros(B, n_map, 0, dtype=f64)
        self.hused = torch.zeros(B, n_map, dtype=torch.long)
        self.work = torch.zeros(B, dtype=torch.long)
        self._np: tuple | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in self.BATCH_FIRST}

    def nbytes(self) -> int:
        """Bytes of every state tensor (the work counter excluded)."""
        return sum(t.numel() * t.element_size() for k, t in self.tensors().items() if k != "work")

    def map_apply(self, fn) -> None:
        """Apply ``fn(tensor) -> tensor`` along the batch dimension of every state (beam search)."""
        for k, t in self.tensors().items():
            setattr(self, k, fn(t).contiguous())
        self._np = None

    def _arrays(self) -> tuple:
        """Numpy views of the states in the kernel's order (made again when a tensor is replaced)."""
        if self._np is None:
            p = self.prog
            st = [t.numpy() for t in self.tensors().values()]
            self._np = ((p.pc, p.pf, p.group, p.tables, *st[:-1]), st[-1])
        return self._np

    def _reserve(self, n: int) -> None:
        """Room in the per-token maps for ``n`` more tokens (amortised doubling, load <= 1/2)."""
        if self.prog.counts[MAP] == 0:
            return
        need = int(self.hused.max()) + n
        if need > self.hval.shape[2]:
            E = max(need, 2 * self.hval.shape[2])
            B, M, old, D = self.hval.shape
            self.hval = torch.cat([self.hval, self.hval.new_zeros(B, M, E - old, D)], dim=2)
            self.hcnt = torch.cat([self.hcnt, self.hcnt.new_zeros(B, M, E - old)], dim=2)
            self._np = None
        if 2 * need > self.hkey.shape[2]:
            cap = 1 << (4 * need - 1).bit_length()
            nk, ne = rehash(self.hkey.numpy(), self.hent.numpy(), cap)
            self.hkey, self.hent = torch.from_numpy(nk), torch.from_numpy(ne)
            self._np = None

    def trim(self) -> None:
        """Shrink the per-token maps to what they hold (after a prefill reserved room for every token)."""
        if not self.prog.counts[MAP]:
            return
        used = int(self.hused.max())
        if self.hval.shape[2] > used + 16:
            self.hval, self.hcnt = self.hval[:, :, :used + 16].contiguous(), self.hcnt[:, :, :used + 16].contiguous()
            self._np = None
        cap = 1 << (2 * (used + 64) - 1).bit_length()  # load <= 1/2 for the next 64 tokens
        if self.hkey.shape[2] > cap:
            nk, ne = rehash(self.hkey.numpy(), self.hent.numpy(), cap)
            self.hkey, self.hent = torch.from_numpy(nk), torch.from_numpy(ne)
            self._np = None

    def step(self, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor,
             parallel: bool = False) -> torch.Tensor:
        """``ids [B, n] int64, v [B, G, n, D] (every KV group's new values), start [B]`` ->
        ``[B, H, n, D]`` in v's dtype (CPU). Advances the state by ``n`` tokens. ``parallel``
        spreads rows over Numba's threads: off by default, since measured beside torch's own
        threads (batch 8, context 2048, 2 cores) they made every later torch op of the step ~3x slower."""
        B, n = ids.shape
        self._reserve(n)
        vd = v.detach()
        if vd.dtype not in (torch.float32, torch.float64):
            vd = vd.float()
        vn = np.ascontiguousarray(vd.cpu().numpy())
        idn = ids.numpy() if _ready(ids) else np.ascontiguousarray(ids.detach().cpu().numpy(), dtype=np.int64)
        stn = start.numpy() if _ready(start) else np.ascontiguousarray(start.detach().cpu().numpy(), dtype=np.int64)
        if idn.size and (idn.min() < 0 or idn.max() >= self.prog.tables.shape[1]):
            raise ValueError(f"token ids must be in [0, {self.prog.tables.shape[1]}), got "
                             f"[{idn.min()}, {idn.max()}]: a plan for another vocabulary")
        if stn.shape != (B,) or v.dim() != 4 or tuple(v.shape[0:1]) + tuple(v.shape[2:3]) != (B, n) \
                or v.shape[1] <= int(self.prog.group.max(initial=0)):
            raise ValueError(f"expected ids [B, n], v [B, G, n, D] and start [B], got {tuple(ids.shape)}, "
                             f"{tuple(v.shape)} and {tuple(start.shape)}")
        out = np.empty((B, self.prog.n_heads, n, vn.shape[3]), dtype=vn.dtype)
        prog_and_state, work = self._arrays()
        run_stream((idn, vn, self.length, stn, *prog_and_state, out, work),
                   parallel)
        self.length += n
        if n > 1:
            self.trim()
        res = torch.from_numpy(out)
        return res if res.dtype == v.dtype else res.to(v.dtype)
