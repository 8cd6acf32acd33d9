"""The program-head op: a head's output computed from token ids, per-vocabulary boolean
tables and the head's values, for a weighted mix of selector terms, in O(T*D).

Files (fla style):

- ``spec.py``: the typed primitives (``Pointer``, ``Scan``, ``SameToken``, ``Induction``), the
  one column table they pack into (``SCHEMA``) and ``HeadSpec``;
- ``backends.py``: the registry (``numba``, ``triton``, ``torch``), each with ``prefill``,
  ``zero_state`` and a functional ``step``;
- ``naive.py``: the dense torch reference, O(T^2) (the ``torch`` backend);
- ``numba_cpu.py``: the fused one-pass CPU kernel of one head over a whole sequence (the
  ``numba`` backend's prefill);
- ``stream.py`` + ``stream_cpu.py``: a layer's heads as one program and its decoding states in
  Numba (the ``numba`` backend's ``step``);
- ``prep.py`` + ``triton_gpu.py``: integer index prep in torch, value scans and gathers in Triton
  (the ``triton`` backend's prefill); ``stream_triton.py``: the decoding states in Triton.

Importing this package is cheap; each backend module is imported by whoever uses it.
"""
