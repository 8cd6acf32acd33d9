"""``surrogates.safetensors``: round trip gives identical outputs; every bad file is refused
with a one-line ``HeadcodeError``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from catalogue import PROGRAMS, REJECTED, VOCAB, random_ids
from safetensors.numpy import save_file

from headcode.compiler import SurrogatePlan, compile_program, load_plan, run_head, save_plan
from headcode.compiler.program import Program
from headcode.errors import HeadcodeError

FP = "fp-export"


@pytest.fixture(scope="module")
def plan():
    heads = {}
    for i, c in enumerate(PROGRAMS + REJECTED):
        heads[f"L{i // 4}.H{i % 4}"] = compile_program(Program.from_source(c.source, c.name), VOCAB, FP, "tiny/model")
    return SurrogatePlan(model_id="tiny/model", fingerprint=FP, heads=heads)


@pytest.fixture()
def saved(plan, tmp_path):
    return save_plan(plan, tmp_path / "surrogates.safetensors")


def test_round_trip_identical_outputs(plan, saved):
    back = load_plan(saved, expected_fingerprint=FP, expected_model="tiny/model")
    assert back.model_id == "tiny/model" and back.fingerprint == FP and back.heads.keys() == plan.heads.keys()
    rng = np.random.default_rng(1)
    ids = torch.from_numpy(np.stack([random_ids(rng, 30) for _ in range(2)]))
    v = torch.randn(2, 30, 8)
    for key, head in plan.heads.items():
        b = back.heads[key]
        assert (b.name, b.source, b.terms, b.table_names, b.compiled, b.reasons) == \
            (head.name, head.source, head.terms, head.table_names, head.compiled, head.reasons)
        np.testing.assert_array_equal(b.tables, head.tables)
        if head.compiled:
            assert torch.equal(run_head(b, ids, v), run_head(head, ids, v))
    assert not list(saved.parent.glob(".*tmp*"))  # the temporary name is gone


def _one_line_error(path, **kw) -> str:
    with pytest.raises(HeadcodeError) as e:
        load_plan(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_refuses_other_tokenizer_and_model(saved):
    assert "another tokenizer" in _one_line_error(saved, expected_fingerprint="other")
    assert "compiled for model" in _one_line_error(saved, expected_model="other/model")


def test_refuses_other_format_version(saved, tmp_path):
    from safetensors import safe_open

    with safe_open(str(saved), framework="numpy") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["format_version"] = "999"
    p = tmp_path / "v999.safetensors"
    save_file(tensors, str(p), metadata=meta)
    assert "format version 999" in _one_line_error(p)


def test_refuses_truncated_corrupt_and_foreign_files(saved, tmp_path):
    data = saved.read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(data[: len(data) - 100])
    assert "cannot read surrogate plan" in _one_line_error(trunc)
    # flip one byte inside the last tensor's data: the header still parses, the checksum does not
    corrupt = tmp_path / "corrupt.safetensors"
    b = bytearray(data)
    b[-5] ^= 0x01
    corrupt.write_bytes(bytes(b))
    assert "corrupt" in _one_line_error(corrupt)
    text = tmp_path / "notes.safetensors"
    text.write_text("these are not tensors")
    assert "cannot read surrogate plan" in _one_line_error(text)
    other = tmp_path / "weights.safetensors"
    save_file({"w": np.zeros(3, dtype=np.float32)}, str(other), metadata={"x": "y"})
    assert "not a headcode surrogate plan" in _one_line_error(other)
    assert "no surrogate plan" in _one_line_error(tmp_path / "missing.safetensors")
    header = json.loads(data[8: 8 + int.from_bytes(data[:8], "little")])
    assert header["__metadata__"]["format"] == "headcode-surrogates"
