"""Decoding states in Triton (``stream_triton``; under ``TRITON_INTERPRET=1`` where no GPU is lent):
prefill then token-by-token decoding equals the dense reference, several heads in one call, beam
reordering, and a model decoding through the headcode cache with the ``triton`` backend equals
recompute; and the kernels compile for a GPU (the interpreter does not type-check the compiled path)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from test_stream import DEV, _layer

from headcode.kernels.program_head.naive import program_head_naive
from headcode.kernels.program_head.stream import LayerProgram
from headcode.kernels.program_head.stream_triton import TritonLayerState


def test_heads_of_a_layer_prefill_decode_and_reorder_match_reference():
    specs, groups = _layer(3), [1, 0, 1]  # every primitive, rings of several lengths
    g = torch.Generator().manual_seed(3)
    B, T, D = 3, 26, 8
    ids = torch.randint(0, 6, (B, T), generator=g) * torch.randint(1, 4, (B, T), generator=g) % 23
    v = torch.randn(B, 2, T, D, generator=g)
    start = torch.tensor([0, 9, 15])
    st = TritonLayerState(LayerProgram.build(specs, groups), B, D, DEV)
    outs = [st.step(ids[:, :10].to(DEV), v[:, :, :10].to(DEV), start.to(DEV)).cpu()]
    for i in range(10, 18):
        outs.append(st.step(ids[:, i:i + 1].to(DEV), v[:, :, i:i + 1].to(DEV), start.to(DEV)).cpu())
    out = torch.cat(outs, 2)
    for h, sp in enumerate(specs):
        ref = program_head_naive(sp, ids[:, :18], v[:, groups[h], :18], start)
        torch.testing.assert_close(out[:, h], ref, atol=1e-5, rtol=0)
    order = torch.tensor([2, 0, 2])  # beam search: rows reordered, then decoding goes on
    st.map_apply(lambda t: t.index_select(0, order.to(t.device)))
    ids, v, start = ids[order], v[order], start[order]
    tail = torch.cat([st.step(ids[:, i:i + 1].to(DEV), v[:, :, i:i + 1].to(DEV), start.to(DEV)).cpu()
                      for i in range(18, T)], 2)
    for h, sp in enumerate(specs):
        ref = program_head_naive(sp, ids, v[:, groups[h]], start)
        torch.testing.assert_close(tail[:, h], ref[:, 18:], atol=1e-5, rtol=0)


_COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from headcode.kernels.program_head import stream_triton as ST
PTR = {"pf_ptr": "*fp32", "tables_ptr": "*u8", "cnt_ptr": "*fp32", "vok_ptr": "*i8", "rok_ptr": "*i8", "seen_ptr": "*i8",
       "hent_ptr": "*i32", "hcnt_ptr": "*fp32", "df_ptr": "*fp32", "v_ptr": "*fp32", "pool_ptr": "*fp32",
       "out_ptr": "*fp32", "oe_ptr": "*i32", "ne_ptr": "*i32"}
for k in (ST._scalar_kernel, ST._vector_kernel, ST._rehash_kernel):
    sig = {a: PTR.get(a, "*i64" if a.endswith("_ptr") else "i32") for a in k.arg_names}
    const = {"BLOCK_D": 32} if "BLOCK_D" in sig else {}
    sig.update({c: "constexpr" for c in const})
    assert "cubin" in triton.compile(ASTSource(k, sig, const), target=GPUTarget("cuda", 90, 32)).asm
"""


def test_the_kernels_compile_for_a_gpu_where_none_is_lent(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile, do not load an earlier result
    r = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
def test_a_model_decodes_through_triton_states(tiny_llama_dir):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
    from test_surrogate import TEXTS, make_plan

    from headcode.runtime.model.loading import load_model
    from headcode.runtime.surrogate.apply import surrogates_applied
    from headcode.runtime.surrogate.cache import HeadcodeCache

    lm = load_model(tiny_llama_dir)
    lm.model.to(DEV)
    ids = lm.tokenizer(TEXTS[2], return_tensors="pt").input_ids.to(DEV)
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0, output_logits=True,
              return_dict_in_generate=True)
    with surrogates_applied(lm, make_plan(lm), backend="triton"), torch.no_grad():
        ours = lm.model.generate(ids, **kw)
        recompute = lm.model.generate(ids, use_cache=False, **kw)
    assert isinstance(getattr(ours, "cache", None) or ours.past_key_values, HeadcodeCache)
    assert torch.equal(ours.sequences, recompute.sequences)
    torch.testing.assert_close(torch.stack(ours.logits), torch.stack(recompute.logits), rtol=0, atol=1e-4)
