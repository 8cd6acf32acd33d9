"""Compiler tests: the shared catalogue on sys.path, Triton in interpreter mode without a GPU."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is defined
for _p in (Path(__file__).resolve().parents[1], Path(__file__).resolve().parent):  # catalogue, headcode_refs
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
