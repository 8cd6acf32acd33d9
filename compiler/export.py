"""``surrogates.safetensors``: a ``SurrogatePlan`` on disk.

Tensors: ``"<head>/tables"`` ``[n_tables, vocab] uint8`` for every head (``[0, vocab]`` for an
uncompiled head). Metadata (strings): ``format`` = ``headcode-surrogates``, ``format_version``,
``model``, ``fingerprint`` (the tokenizer's), and ``heads``: JSON of every head's source, IR
terms with weights and table rows, table names, compiled flag and reasons, plus a sha256 of
its tables (a flipped byte is caught on load). Written with ``headcode.files.replacing`` (a
temporary name, then ``os.replace``), so a crash never leaves a half-written plan under the real name.

A plan is data. ``load_plan`` parses JSON and reads tensors; it never builds, imports or runs
a program: a head's ``source`` stays text (to show), and every head's terms and tables are
validated (``head.check_head_data``) before anything uses them, so a crafted plan gives a
one-line error rather than an out-of-range table row in a kernel. A head stored uncompiled
(by an older headcode, or crafted) loads as a record; the runtime refuses to run it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from headcode.compiler.head import CompiledHead, SurrogatePlan, check_head_data
from headcode.errors import HeadcodeError
from headcode.files import replacing
from headcode.safe_json import UnsafeJSON, loads_bounded

FORMAT = "headcode-surrogates"
MAX_META_BYTES = 64 << 20  # a plan's JSON metadata: 270 heads take ~1 MB
MAX_META_DEPTH = 32         # heads -> head -> terms -> term -> value: 5 deep
FORMAT_VERSION = "3"  # 3: a head may carry a surrogate (calibrated weights, constant); 2: no surrogates
READS = ("1", "2", FORMAT_VERSION)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes() + str(a.shape).encode()).hexdigest()


def save_plan(plan: SurrogatePlan, path: str | os.PathLike[str]) -> Path:
    """Write ``plan`` to ``path`` atomically; returns the path."""
    path = Path(path)
    tensors: dict[str, np.ndarray] = {}
    heads: dict[str, dict] = {}
    for key, head in plan.heads.items():
        tables = np.ascontiguousarray(head.tables, dtype=np.uint8)
        tensors[f"{key}/tables"] = tables
        heads[key] = dict(head.meta_json(), tables_sha256=_digest(tables))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": plan.model_id,
            "fingerprint": plan.fingerprint, "heads": json.dumps(heads)}
    with replacing(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


_V1_CLASS = {"sentence": ("boundary", "boundary_table"), "sentence_start": ("boundary", "boundary_table"),
             "word_start": ("new_word", "new_word_table")}


def _from_version_1(d: Any) -> Any:
    """A version-1 head read as version 2: the sentence and word selectors kept their class's table
    row on the head (``boundary_table``, ``new_word_table``); version 2 keeps it on the term."""
    if not isinstance(d, dict) or not isinstance(d.get("terms"), list):
        return d  # check_head_data says what is wrong with it
    terms = []
    for t in d["terms"]:
        if isinstance(t, dict) and t.get("kind") in _V1_CLASS:
            name, key = _V1_CLASS[t["kind"]]
            t = dict(t, aux=name, aux_table=d.get(key, -1))
        terms.append(t)
    return {k: v for k, v in d.items() if k not in ("boundary_table", "new_word_table")} | {"terms": terms}


def load_plan(path: str | os.PathLike[str], expected_fingerprint: str | None = None,
              expected_model: str | None = None) -> SurrogatePlan:
    """Read a plan; ``HeadcodeError`` (one line) for a missing, non-safetensors, truncated or
    corrupt file, another format version, or another tokenizer/model than expected."""
    path = Path(path)
    if not path.is_file():
        raise HeadcodeError(f"no surrogate plan at {path}: run `headcode compile DIR` first")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise HeadcodeError(f"{path} is a safetensors file but not a headcode surrogate plan")
            version = meta.get("format_version")
            if version not in READS:
                raise HeadcodeError(f"{path} has surrogate format version {version}, this headcode reads "
                                    f"version {FORMAT_VERSION}: recompile with `headcode compile`")
            model, fp = meta.get("model", ""), meta.get("fingerprint", "")
            if expected_fingerprint is not None and fp != expected_fingerprint:
                raise HeadcodeError(f"{path} was compiled for another tokenizer (fingerprint {fp}, "
                                    f"expected {expected_fingerprint}): recompile for this model")
            if expected_model is not None and model != expected_model:
                raise HeadcodeError(f"{path} was compiled for model {model!r}, not {expected_model!r}")
            heads_meta = loads_bounded(meta["heads"], MAX_META_BYTES, MAX_META_DEPTH)
            if not isinstance(heads_meta, dict):
                raise HeadcodeError(f"{path} is not a valid surrogate plan: its heads are not a JSON object")
            heads = {}
            for key, d in heads_meta.items():
                d = _from_version_1(d) if version == "1" else d
                tables = f.get_tensor(f"{key}/tables")
                if _digest(tables) != d["tables_sha256"]:
                    raise HeadcodeError(f"{path} is corrupt: the tables of head {key} do not match their checksum")
                bad = check_head_data(d, tables)
                if bad:
                    raise HeadcodeError(f"{path} is not a valid surrogate plan: head {key}: " + "; ".join(bad[:3]))
                heads[key] = CompiledHead.from_meta_json(d, tables)
    except HeadcodeError:
        raise
    except UnsafeJSON as e:
        raise HeadcodeError(f"cannot read surrogate plan {path}: its metadata is not JSON headcode reads "
                            f"({e}); recompile it with `headcode compile`") from e
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RecursionError, MemoryError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HeadcodeError(f"cannot read surrogate plan {path}: not a valid or complete safetensors "
                            f"file ({type(e).__name__}: {msg})") from e
    return SurrogatePlan(model_id=model, fingerprint=fp, heads=heads)
