"""Kernel tests: the shared catalogue and this folder on sys.path (the stream tests reuse
``test_program_head``'s primitive grid), Triton in interpreter mode without a GPU."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is defined
_here = Path(__file__).resolve().parent
for _p in (_here.parent, _here):  # the shared catalogue, this folder
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
