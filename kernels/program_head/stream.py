"""Selector states for decoding: all replaced heads of one layer as one program, and the state
that program carries from token to token (see ``stream_cpu`` for what each selector keeps).

    prog = LayerProgram.build([spec_a, spec_b], groups=[1, 1])   # once per plan and layer
    state = LayerState(prog, batch=B, dim=D)                       # once per sequence batch
    out = state.step(ids [B, n], v [B, G, n, D], start [B])        # -> [B, H, n, D]

``step`` continues the sequence: its first token is at position ``state.length``. Every state
tensor has the batch first, so beam search reorders them all with one ``index_select``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from headcode.kernels.program_head import spec as S
from headcode.kernels.program_head.spec import HeadSpec
from headcode.kernels.program_head.stream_cpu import ACC, MAP, RING, STATE_OF_KIND, VEC, rehash, run_stream


def _ready(t: torch.Tensor) -> bool:
    """A CPU int64 contiguous tensor without grad: its numpy view can go to the kernel as is."""
    return t.device.type == "cpu" and t.dtype == torch.long and t.is_contiguous() and not t.requires_grad


def _i64(x: list) -> np.ndarray:
    return np.asarray(x, dtype=np.int64).reshape(-1)


@dataclass(frozen=True, eq=False)
class LayerProgram:
    """The terms of ``H`` heads flattened: ``head[j]`` owns term ``j``, ``slot[j]`` is its row in
    the state array of its kind; tables concatenated (term table rows shifted); ``group[h]`` is
    the KV group whose values head ``h`` reads; ``bnd``/``nwd [H]`` boundary/new-word rows."""

    kinds: np.ndarray
    ks: np.ndarray
    rates: np.ndarray
    strict: np.ndarray
    key_tab: np.ndarray
    query_tab: np.ndarray
    weights: np.ndarray
    head: np.ndarray
    slot: np.ndarray
    group: np.ndarray
    tables: np.ndarray
    bnd: np.ndarray
    nwd: np.ndarray
    counts: tuple[int, int, int, int]   # terms with ACC, VEC, RING, MAP state
    ring_len: int

    @property
    def n_heads(self) -> int:
        return int(self.group.shape[0])

    @classmethod
    def build(cls, specs: Sequence[HeadSpec], groups: Sequence[int], vocab: int = 0) -> LayerProgram:
        """``vocab``: the model's vocabulary size; tables are zero-padded to it (a token id a head was
        not compiled for satisfies none of its predicates)."""
        cols: dict[str, list] = {k: [] for k in ("kinds", "ks", "rates", "strict", "key_tab", "query_tab",
                                                  "weights", "head", "slot")}
        counts = [0, 0, 0, 0]
        tabs, bnd, nwd, off = [], [], [], 0
        vocab = max([vocab, 1] + [sp.vocab_size for sp in specs])
        ring_len = 1
        for h, sp in enumerate(specs):
            def shift(r: int, o: int = off) -> int:
                return int(r) + o if r >= 0 else -1

            for i in range(sp.n_terms):
                kind = int(sp.kinds[i])
                st = STATE_OF_KIND[kind]
                slot = -1
                if st in (ACC, VEC, RING, MAP):
                    slot = counts[st]
                    counts[st] += 1
                if kind == S.OFFSET:
                    ring_len = max(ring_len, int(sp.ks[i]) + 1)
                # segment_start has no shift: its ``ks`` carries its (shifted) aux table row
                k = shift(sp.aux_tab[i]) if kind == S.SEGMENT_START else sp.ks[i]
                for name, val in (("kinds", kind), ("ks", k), ("rates", sp.rates[i]),
                                  ("strict", sp.strict[i]), ("key_tab", shift(sp.key_tab[i])),
                                  ("query_tab", shift(sp.query_tab[i])), ("weights", sp.weights[i]),
                                  ("head", h), ("slot", slot)):
                    cols[name].append(val)
            bnd.append(shift(sp.boundary_tab))
            nwd.append(shift(sp.new_word_tab))
            t = np.zeros((sp.tables.shape[0], vocab), np.uint8)
            t[:, : sp.vocab_size] = sp.tables
            tabs.append(t)
            off += sp.tables.shape[0]
        tables = np.concatenate(tabs) if off else np.zeros((1, vocab), np.uint8)
        return cls(kinds=_i64(cols["kinds"]), ks=_i64(cols["ks"]), rates=np.asarray(cols["rates"], np.float64),
                   strict=_i64(cols["strict"]), key_tab=_i64(cols["key_tab"]), query_tab=_i64(cols["query_tab"]),
                   weights=np.asarray(cols["weights"], np.float64), head=_i64(cols["head"]), slot=_i64(cols["slot"]),
                   group=_i64(groups), tables=np.ascontiguousarray(tables), bnd=_i64(bnd), nwd=_i64(nwd),
                   counts=(counts[0], counts[1], counts[2], counts[3]), ring_len=ring_len)


class LayerState:
    """The selector states of one layer's replaced heads for a batch of sequences (torch CPU
    tensors, batch first; float64 accumulators, float32 per-token map rows -- the size of a
    cached value row). ``work [B]`` counts state elements touched."""

    BATCH_FIRST = ("prev_id", "first_id", "first_v", "acc", "cnt", "vec", "vok", "ring", "rok",
                   "hkey", "hent", "hval", "hcnt", "hused", "work")

    def __init__(self, prog: LayerProgram, batch: int, dim: int):
        self.prog, self.length = prog, 0
        n_acc, n_vec, n_ring, n_map = prog.counts
        H, B, D, f64 = prog.n_heads, batch, dim, torch.float64
        self.prev_id = torch.full((B,), -1, dtype=torch.long)
        self.first_id = torch.full((B,), -1, dtype=torch.long)
        self.first_v = torch.zeros(B, H, D, dtype=f64)
        self.acc, self.cnt = torch.zeros(B, n_acc, D, dtype=f64), torch.zeros(B, n_acc, dtype=f64)
        self.vec, self.vok = torch.zeros(B, n_vec, D, dtype=f64), torch.zeros(B, n_vec, dtype=torch.int8)
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
            self._np = ((p.kinds, p.ks, p.rates, p.strict, p.key_tab, p.query_tab, p.weights, p.head, p.slot,
                         p.group, p.tables, p.bnd, p.nwd, *st[:-1]), st[-1])
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
