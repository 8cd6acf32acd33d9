"""``headcode bench --quick`` on a tiny model writes the documented JSON, and its ratios are the
ratios of its own times."""

from __future__ import annotations

import json
import math

import pytest

from headcode.cli import main

CASE_FIELDS = ("name", "group", "seq_len", "d", "surrogate_ms", "neural_ms", "speedup")
MACHINE_FIELDS = ("cpu", "cores", "torch", "numba", "triton", "transformers", "gpu")


@pytest.fixture(scope="module")
def report(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    assert main(["bench", tiny_llama_dir, "--quick", "--threads", "1", "--out", str(out)]) == 0
    assert not list(out.parent.glob("*.tmp*"))  # written under a temporary name, then replaced
    return json.loads(out.read_text())


def test_bench_json_has_the_documented_fields(report):
    assert report["format"] == "headcode-bench" and report["quick"] is True
    for key in MACHINE_FIELDS:
        assert key in report["machine"], key
    assert report["machine"]["cores"] >= 1
    groups = {c["group"] for c in report["cases"]}
    assert {"head", "memory", "compile", "layer", "model", "generate", "synthesis"} <= groups
    for c in report["cases"]:
        for key in CASE_FIELDS:
            assert key in c, (c["name"], key)
    names = [c["name"] for c in report["cases"]]
    assert len(names) == len(set(names))
    head = [c for c in report["cases"] if c["group"] == "head"]
    assert {c["seq_len"] for c in head} == {128, 512} and {c["d"] for c in head} == {64}
    mem = next(c for c in report["cases"] if c["group"] == "memory")
    assert mem["seq_len"] == 4096 and mem["surrogate_bytes"] > 0 and mem["eager_bytes"] > 4096 * 4096 * 4
    synth = next(c for c in report["cases"] if c["group"] == "synthesis")
    assert synth["heads_per_min"] == pytest.approx(60e3 / synth["surrogate_ms"])
    assert any(s["name"] == "head/triton" for s in report["skipped"]) or report["machine"]["gpu"]


def test_every_speedup_is_neural_over_surrogate(report):
    timed = [c for c in report["cases"] if c["group"] in ("head", "layer", "model", "generate")]
    assert timed
    for c in report["cases"]:
        if c["group"] in ("head", "layer", "model", "generate"):
            assert c["surrogate_ms"] > 0 and c["neural_ms"] > 0, c["name"]
        if c["speedup"] is None:
            assert c["group"] in ("compile", "synthesis", "memory"), c["name"]
            continue
        assert math.isclose(c["speedup"], c["neural_ms"] / c["surrogate_ms"], rel_tol=1e-9), c["name"]
    for c in report["cases"]:
        if c["group"] == "generate":
            assert c["surrogate_tokens_per_s"] == pytest.approx(1e3 / c["surrogate_ms"])
            assert c["neural_tokens_per_s"] == pytest.approx(1e3 / c["neural_ms"])


def test_model_cases_replace_the_share_of_heads_asked(report):
    for c in report["cases"]:
        if c["group"] == "model":
            assert c["replaced"] == max(1, round(c["target_fraction"] * 2 * 4))  # 2 layers x 4 heads
            assert len(set(c["heads"])) == c["replaced"]


def test_bench_refuses_an_unknown_suite(tmp_path, capsys):
    assert main(["bench", "--only", "nope", "--out", str(tmp_path / "b.json")]) == 1
    assert "--only" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_surrogates_file_heads_are_the_ones_replaced(tiny_llama_dir, tmp_path):
    from headcode.compiler import SurrogatePlan, compile_source, save_plan
    from headcode.compiler.tokens import vocabulary_pieces
    from headcode.runtime.model.loading import load_model

    lm = load_model(tiny_llama_dir)
    pieces = vocabulary_pieces(lm.tokenizer)
    src = "def attend(t):\n    return 0.7 * previous(t, 1) + 0.3 * first(t)\n"
    plan = SurrogatePlan(lm.name, lm.fingerprint, {
        k: compile_source(src, pieces, lm.fingerprint, name=k, model_id=lm.name) for k in ("L0.H1", "L1.H2")})
    save_plan(plan, tmp_path / "plan.safetensors")
    out = tmp_path / "b.json"
    assert main(["bench", tiny_llama_dir, "--quick", "--only", "model", "--threads", "1",
                 "--surrogates", str(tmp_path / "plan.safetensors"), "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["surrogates"] == str(tmp_path / "plan.safetensors")
    assert {c["group"] for c in rep["cases"]} == {"layer", "model", "generate"}
    for c in rep["cases"]:
        assert c["plan"] == "file" and set(c["heads"]) <= {"L0.H1", "L1.H2"}
        assert math.isclose(c["speedup"], c["neural_ms"] / c["surrogate_ms"], rel_tol=1e-9)


def test_bench_serve_runs_both_sides_in_their_own_servers(tiny_llama_dir, tmp_path):
    out = tmp_path / "serve.json"
    assert main(["bench", tiny_llama_dir, "--quick", "--only", "serve", "--out", str(out)]) == 0
    (c,) = json.loads(out.read_text())["cases"]
    assert c["group"] == "serve" and c["clients"] == 4
    for side in (c["base"], c["surrogate"]):
        assert side["tokens_per_s"] > 0 and side["ttft_p50"] > 0 and side["token_p99"] >= side["token_p50"] > 0
        assert side["cache_bytes_peak"] > 0
    assert math.isclose(c["speedup"], c["surrogate"]["tokens_per_s"] / c["base"]["tokens_per_s"], rel_tol=1e-6)
    assert c["batching_gain"] > 0 and 0 < c["cache_ratio"] < 1  # half the KV groups keep no K/V


def test_the_decode_grid_given_on_the_command_line_is_the_one_run(tiny_llama_dir, tmp_path, monkeypatch):
    import headcode.benchmarks.decode_cases as dc

    seen = []
    monkeypatch.setattr(dc, "decode_cases", lambda lm, settings, plan=None, log=print: seen.append(settings) or [])
    out = tmp_path / "b.json"
    assert main(["bench", tiny_llama_dir, "--quick", "--only", "decode", "--decode-contexts", "64,128",
                 "--decode-batches", "2", "--decode-fractions", "0.5", "--prefill-lengths", "96",
                 "--decode-steps", "3", "--out", str(out)]) == 0
    (s,) = seen
    assert (s.decode_contexts, s.decode_batches, s.decode_fractions, s.prefill_lengths, s.decode_steps) == \
        ((64, 128), (2,), (0.5,), (96,), 3)
