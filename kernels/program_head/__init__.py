"""The program-head op: a head's output computed from token ids, per-vocabulary boolean
tables and the head's values, for a weighted mix of selector terms, in O(T*D).

Files (fla style): ``spec.py`` (the kernel-level term encoding), ``naive.py`` (dense torch
reference, O(T^2)), ``numba_cpu.py`` (fused one-pass CPU kernel), ``prep.py`` + ``triton_gpu.py``
(integer index prep in torch, value scans and gathers in Triton). Importing this package is
cheap; each backend module is imported by whoever uses it.
"""
