"""Decoding states (the ``numba`` backend): all replaced heads of one layer as one program of
primitive terms, and the state that program carries from token to token (``stream_cpu``
defines what each term keeps).

    prog = LayerProgram.build([spec_a, spec_b], groups=[1, 1])   # once per plan and layer
    state = LayerState(prog, batch=B, dim=D)                       # a zero state, once per batch
    out = state.step(ids [B, n], v [B, G, n, D], start [B])        # -> [B, H, n, D]

``step`` continues the sequence: its first token is at position ``state.length``; a whole
sequence is one step from a zero state. Every state tensor has the batch first, so beam search
reorders them all with one ``index_select``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from headcode.kernels.program_head import spec as S
from headcode.kernels.program_head import stream_cpu as C
from headcode.kernels.program_head.spec import HeadSpec


def _ready(t: torch.Tensor) -> bool:
    """A CPU int64 contiguous tensor without grad: its numpy view can go to the kernel as is."""
    return t.device.type == "cpu" and t.dtype == torch.long and t.is_contiguous() and not t.requires_grad


@dataclass(frozen=True, eq=False)
class LayerProgram:
    """The terms of ``H`` heads flattened into one ``HeadSpec`` (``terms``: tables concatenated, each
    term's table rows renumbered into them); ``place [J, 3]``: each term's head, its slot in the
    state arrays of its kind and its ring slot (a pointer with shift < 0; else -1); ``group[h]``
    is the KV group whose values head ``h`` reads; ``counts``: slots of each state kind
    (``stream_cpu``'s ACC, VEC, RING, MAP)."""

    terms: HeadSpec
    place: np.ndarray
    group: np.ndarray
    counts: tuple[int, int, int, int]
    ring_len: int

    @property
    def tables(self) -> np.ndarray:
        return self.terms.tables

    @property
    def n_heads(self) -> int:
        return int(self.group.shape[0])

    @property
    def head(self) -> np.ndarray:
        """``[J]``: the head of each term."""
        return self.place[:, C.HEAD]

    def slots(self, owner: int) -> int:
        """Slots per batch row of a state owner (``stream_cpu.HEADS`` .. ``MAP``)."""
        return {C.HEADS: self.n_heads, C.ACC: self.counts[0], C.VEC: self.counts[1], C.RING: self.counts[2],
                C.MAP: self.counts[3]}[owner]

    @cached_property
    def packed(self) -> C.Program:
        """The arrays the kernel reads (``stream_cpu.Program``)."""
        return C.Program(self.terms.ints, self.terms.reals, self.place, self.group, self.tables)

    @classmethod
    def build(cls, specs: Sequence[HeadSpec], groups: Sequence[int], vocab: int = 0) -> LayerProgram:
        """``vocab``: the model's vocabulary size; tables are zero-padded to it (a token id a head was
        not compiled for satisfies none of its predicates)."""
        counts = {C.ACC: 0, C.VEC: 0, C.RING: 0, C.MAP: 0}
        terms, place, tabs, off, ring_len = [], [], [], 0, 1
        vocab = max([vocab, 1] + [sp.vocab_size for sp in specs])
        for h, sp in enumerate(specs):
            for t in sp.terms:
                kind = C.STATE_OF_KIND[t.kind]
                slot, rslot = counts[kind], -1
                counts[kind] += 1
                if isinstance(t.prim, S.Pointer) and t.prim.shift < 0:
                    rslot, counts[C.RING] = counts[C.RING], counts[C.RING] + 1
                    ring_len = max(ring_len, 1 - int(t.prim.shift))
                place.append((h, slot, rslot))
                terms.append(S.renumber_tables(t, off))
            t = np.zeros((sp.tables.shape[0], vocab), np.uint8)
            t[:, : sp.vocab_size] = sp.tables
            tabs.append(t)
            off += sp.tables.shape[0]
        tables = np.concatenate(tabs) if off else np.zeros((1, vocab), np.uint8)
        return cls(terms=HeadSpec(tuple(terms), np.ascontiguousarray(tables)),
                   place=np.asarray(place, np.int64).reshape(-1, 3), group=np.asarray(groups, np.int64).reshape(-1),
                   counts=(counts[C.ACC], counts[C.VEC], counts[C.RING], counts[C.MAP]), ring_len=ring_len)


def zero_arrays(prog: LayerProgram, batch: int, dim: int) -> dict[str, torch.Tensor]:
    """Every array of ``stream_cpu.STATE`` for ``batch`` rows, at its initial value (torch CPU)."""
    sizes = {"D": dim, "R": prog.ring_len, "CAP": 1, "E": 0}
    out = {}
    for a in C.STATE:
        lead = (batch,) if a.owner == C.ROW else (batch, prog.slots(a.owner))
        out[a.name] = torch.full(lead + tuple(sizes[x] for x in a.shape), a.fill, dtype=getattr(torch, a.dtype))
    return out


class LayerState:
    """The selector states of one layer's replaced heads for a batch of sequences (torch CPU
    tensors, batch first, as ``stream_cpu.STATE`` lists them: float64 accumulators, float32
    per-token map rows -- the size of a cached value row). ``work [B]`` counts state elements
    touched. Each array is also an attribute (``state.acc``)."""

    BATCH_FIRST = tuple(a.name for a in C.STATE)

    def __init__(self, prog: LayerProgram, batch: int, dim: int):
        self.prog, self.length = prog, 0
        self.arrays = zero_arrays(prog, batch, dim)
        self._np: C.State | None = None

    def __getattr__(self, name: str) -> torch.Tensor:
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.arrays)

    def nbytes(self) -> int:
        """Bytes of every state tensor (the work counter excluded)."""
        return sum(t.numel() * t.element_size() for k, t in self.arrays.items() if k != "work")

    def map_apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Apply ``fn(tensor) -> tensor`` along the batch dimension of every state (beam search)."""
        self._set(**{k: fn(t) for k, t in self.arrays.items()})

    def replace(self, **arrays: torch.Tensor) -> None:
        """Swap in new arrays (batch first, named as in ``stream_cpu.STATE``): continuous batching
        pads, trims and joins rows (``runtime.serving.rows``)."""
        unknown = set(arrays) - set(self.arrays)
        if unknown:
            raise KeyError(f"not a state array: {', '.join(sorted(unknown))}")
        self._set(**arrays)

    def _set(self, **arrays: torch.Tensor) -> None:
        self.arrays.update({k: t.contiguous() for k, t in arrays.items()})
        self._np = None

    def _state(self) -> C.State:
        """Numpy views of the states (made again when a tensor is replaced)."""
        if self._np is None:
            self._np = C.State(**{k: t.numpy() for k, t in self.arrays.items()})
        return self._np

    def _reserve(self, n: int) -> None:
        """Room in the per-token maps for ``n`` more tokens (amortised doubling, load <= 1/2)."""
        if self.prog.counts[3] == 0:
            return
        hval, hcnt = self.arrays["hval"], self.arrays["hcnt"]
        need = int(self.arrays["hused"].max()) + n
        if need > hval.shape[2]:  # grown in numpy: torch's pool threads woken for ~1 MB cost ~10 ms here
            E = max(need, 2 * hval.shape[2])
            hv, hc = np.zeros(hval.shape[:2] + (E, hval.shape[3]), np.float32), np.zeros(hcnt.shape[:2] + (E,))
            hv[:, :, : hval.shape[2]], hc[:, :, : hcnt.shape[2]] = hval.numpy(), hcnt.numpy()
            self._set(hval=torch.from_numpy(hv), hcnt=torch.from_numpy(hc))
        if 2 * need > self.arrays["hkey"].shape[2]:
            self._rehash(1 << (4 * need - 1).bit_length())

    def _rehash(self, cap: int) -> None:
        nk, ne = C.rehash(self.arrays["hkey"].numpy(), self.arrays["hent"].numpy(), cap)
        self._set(hkey=torch.from_numpy(nk), hent=torch.from_numpy(ne))

    def trim(self) -> None:
        """Shrink the per-token maps to what they hold (after a prefill reserved room for every token)."""
        if not self.prog.counts[3]:
            return
        used = int(self.arrays["hused"].max())
        if self.arrays["hval"].shape[2] > used + 16:
            self._set(hval=self.arrays["hval"][:, :, :used + 16], hcnt=self.arrays["hcnt"][:, :, :used + 16])
        cap = 1 << (2 * (used + 64) - 1).bit_length()  # load <= 1/2 for the next 64 tokens
        if self.arrays["hkey"].shape[2] > cap:
            self._rehash(cap)

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
        C.run_stream(C.Step(idn, vn, self.length, stn), self.prog.packed, self._state(), out, parallel)
        self.length += n
        if n > 1:
            self.trim()
        res = torch.from_numpy(out)
        return res if res.dtype == v.dtype else res.to(v.dtype)


# the ``numba`` backend (``backends``): a whole sequence of one head runs the fused kernel
# (``numba_cpu``: 2-23x faster than these states stepped from zero, benchmarks/test_head_kernels.py)
def prefill(spec: HeadSpec, ids: torch.Tensor, v: torch.Tensor, start: torch.Tensor | None = None,
            n_q: int | None = None) -> torch.Tensor:
    """One head over a whole sequence: ``ids [B, T] int64, v [B, T, D], start [B] | None ->
    out [B, n_q, D]`` (v's dtype, on v's device; computed on the CPU)."""
    from headcode.kernels.program_head.numba_cpu import program_head_numba

    return program_head_numba(spec, ids, v, start, n_q).to(v.device)


def zero_state(program: LayerProgram, batch: int, dim: int, device: object = None) -> LayerState:
    return LayerState(program, batch, dim)


def step(program: LayerProgram, state: LayerState, ids: torch.Tensor, v: torch.Tensor,
         start: torch.Tensor) -> tuple[torch.Tensor, LayerState]:
    if state.prog is not program:
        raise ValueError("this state was made for another layer program")
    return state.step(ids, v, start), state
