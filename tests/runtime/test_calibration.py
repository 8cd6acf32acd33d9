"""Issue 19: surrogates calibrated for the model — a planted head is recovered, the test split is
never read, and a calibrated plan (weights and a constant output) runs the same in every path:
prefill, ``generate`` through ``HeadcodeCache`` against recompute, the plan file, and serving."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_surrogate import make_plan

from headcode.compiler import load_plan, save_plan
from headcode.runtime.calibration.fit import CalibrationSettings, calibrate
from headcode.runtime.calibration.trainable import TrainableHead
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.model.loading import load_model
from headcode.runtime.surrogate.apply import apply_plan, plan_for_model, surrogates_applied
from headcode.runtime.surrogate.cache import HeadcodeCache

SRC = "def attend(t):\n    return 0.7 * previous(t, 1) + 0.3 * first(t)\n"
SRC2 = "def attend(t):\n    return 0.5 * decay(t, 0.7) + 0.5 * same_token(t)\n"


def _texts(lm, n: int, seed: int, T: int = 24) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(5, lm.tokenizer.vocab_size - 1, size=T) for _ in range(n)]


def _planted(lm, rng_seed: int = 0):
    """A plan (two heads) and the same plan with known surrogate weights and constants."""
    plan = make_plan(lm, {HeadRef(0, 1): SRC, HeadRef(1, 2): SRC2})
    g = torch.Generator().manual_seed(rng_seed)
    true = {}
    for key, h in plan.heads.items():
        w = [0.25, 0.75] if key == "L0.H1" else [0.8, 0.2]
        true[key] = h.calibrated(w, (torch.randn(lm.head_dim, generator=g) * 0.5).tolist(), "planted")
    return plan, type(plan)(plan.model_id, plan.fingerprint, true)


def _log_probs_with(lm, plan, ids: np.ndarray) -> torch.Tensor:
    with surrogates_applied(lm, plan, backend="torch"), torch.no_grad():
        out = lm.model(input_ids=torch.as_tensor(ids)[None], use_cache=False).logits[0, :-1]
    return torch.log_softmax(out.float(), -1)


def test_a_planted_program_and_constant_are_recovered(tiny_llama_dir):
    lm = load_model(tiny_llama_dir)
    plan, true = _planted(lm)
    fit, select = _texts(lm, 8, 1), _texts(lm, 4, 2)
    cal = calibrate(lm, plan, fit, select, CalibrationSettings(steps=240, lr=0.05, lr_constant=0.05, eval_every=40, patience=6,
                                                               progress=False),
                    teacher=lambda ids: _log_probs_with(lm, true, ids))
    assert cal.report["kl_select_best"] < 0.1 * cal.report["kl_select_start"], cal.report["history"]
    for key, h in cal.plan.heads.items():
        got, want = np.array(h.surrogate.weights), np.array(true.heads[key].surrogate.weights)
        assert np.abs(got - want).max() < 0.1, (key, got, want)
        c, c0 = np.array(h.constant), np.array(true.heads[key].constant)
        assert np.linalg.norm(c - c0) < 0.3 * np.linalg.norm(c0), (key, c, c0)
        assert h.terms == plan.heads[key].terms  # the explanation is unchanged


def test_calibration_never_reads_the_test_split(tiny_llama_dir, monkeypatch):
    """calibrate takes fit and select texts only; the command's texts come from those splits: a
    corpus whose test split is changed gives the same calibrated plan, bit for bit."""
    from headcode.pipeline import calibrate as P
    from headcode.runtime.text import corpus as C

    lm = load_model(tiny_llama_dir)
    plan = make_plan(lm, {HeadRef(0, 1): SRC})
    real = C.load_corpus

    def planted(name, *a, **kw):
        c = real(name, *a, **kw)
        texts = tuple("Planted test text that must change nothing. " * 3 if s == "test" else t
                      for t, s in zip(c.texts, c.splits))
        return dataclasses.replace(c, texts=texts)

    s = P.CalibrateSettings(surrogates="-", out="-", max_texts=4, max_tokens=24, progress=False,
                            fit=CalibrationSettings(steps=6, eval_every=3))
    a = P.calibrate_loaded(lm, plan, s)
    monkeypatch.setattr(C, "load_corpus", planted)
    b = P.calibrate_loaded(lm, plan, s)
    assert a.plan.heads["L0.H1"].surrogate == b.plan.heads["L0.H1"].surrogate
    assert a.report["steps"] == 6 and a.plan.heads["L0.H1"].surrogate.weights != (0.7, 0.3)


@pytest.fixture(scope="module")
def calibrated(tiny_llama_dir, tmp_path_factory):
    lm = load_model(tiny_llama_dir)
    _, true = _planted(lm, 3)
    path = save_plan(true, tmp_path_factory.mktemp("cal") / "plan.safetensors")
    return lm, load_plan(path), path


def test_the_plan_file_keeps_both_weight_sets(calibrated):
    lm, plan, _ = calibrated
    h = plan.heads["L0.H1"]
    assert [t.weight for t in h.terms] == pytest.approx([0.7, 0.3]) and h.surrogate.weights == (0.25, 0.75)
    assert len(h.constant) == lm.head_dim and h.surrogate.fitted == "planted"


def test_prefill_equals_the_dense_reference_with_the_constant(calibrated):
    """Every backend's layer output with the constant equals the trainable head's dense reference."""
    lm, plan, _ = calibrated
    ids = _texts(lm, 1, 5, T=20)[0]
    ref = {HeadRef.parse(k): TrainableHead(h, lm.head_dim, torch.tensor(h.constant)) for k, h in plan.heads.items()}
    for t, h in zip(ref.values(), plan.heads.values()):
        t.logits.data = torch.log(torch.tensor(h.surrogate.weights, dtype=torch.float64))
    with apply_plan(lm, ref, stateful=False), torch.no_grad():
        want = lm.model(input_ids=torch.as_tensor(ids)[None], use_cache=False).logits
    for backend in ("torch", "numba"):
        with surrogates_applied(lm, plan, backend=backend), torch.no_grad():
            got = lm.model(input_ids=torch.as_tensor(ids)[None], use_cache=False).logits
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_generate_through_the_states_equals_recompute_with_the_constant(calibrated):
    lm, plan, _ = calibrated
    ids = torch.as_tensor(_texts(lm, 1, 6, T=12)[0])[None]
    args = dict(max_new_tokens=24, min_new_tokens=24, do_sample=False, pad_token_id=0, output_logits=True,
                return_dict_in_generate=True)
    with surrogates_applied(lm, plan), torch.no_grad():
        ours = lm.model.generate(ids, **args)
        recompute = lm.model.generate(ids, use_cache=False, **args)
        full = lm.model(input_ids=ours.sequences).logits
    assert isinstance(getattr(ours, "cache", None) or ours.past_key_values, HeadcodeCache)
    assert torch.equal(ours.sequences, recompute.sequences)
    torch.testing.assert_close(torch.stack(ours.logits, 1), full[:, ids.shape[1] - 1:-1], rtol=0, atol=1e-4)
    uncal = type(plan)(plan.model_id, plan.fingerprint,
                       {k: h.calibrated(h.surrogate.weights, [0.0] * lm.head_dim, "") for k, h in plan.heads.items()})
    with surrogates_applied(lm, uncal), torch.no_grad():
        other = lm.model(input_ids=ours.sequences).logits
    assert (other - full).abs().max() > 1e-3  # the constant is in use


def test_a_constant_of_the_wrong_size_is_refused_at_load(calibrated):
    from headcode.errors import HeadcodeError

    lm, plan, _ = calibrated
    bad = type(plan)(plan.model_id, plan.fingerprint,
                     {k: h.calibrated(h.surrogate.weights, [1.0, 2.0], "") for k, h in plan.heads.items()})
    with pytest.raises(HeadcodeError, match="constant output"):
        plan_for_model(bad, lm)


def test_serve_answers_with_a_calibrated_plan(calibrated, tiny_llama_dir):
    """The served completion equals ``generate`` on the model with the calibrated plan."""
    from fastapi.testclient import TestClient

    from headcode.pipeline.serve import ServeSettings, start_server

    lm, plan, path = calibrated
    srv = start_server(ServeSettings(model=tiny_llama_dir, surrogates=path, port=0, max_tokens=16))
    try:
        with TestClient(srv.app) as c:
            r = c.post("/v1/completions", json={"model": srv.served.id, "prompt": "Tom saw a ball",
                                                "max_tokens": 8, "temperature": 0})
    finally:
        srv.socket.close()  # the engine started and drained with the app (TestClient runs its lifespan)
    assert r.status_code == 200, r.text
    ids = torch.tensor([lm.tokenizer("Tom saw a ball")["input_ids"]])
    with surrogates_applied(lm, plan), torch.no_grad():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id)
    assert r.json()["choices"][0]["text"] == lm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_the_command_writes_a_calibrated_plan_and_compares(tiny_llama_dir, tmp_path, capsys):
    import json

    from headcode.cli import main

    lm = load_model(tiny_llama_dir)
    src = save_plan(make_plan(lm, {HeadRef(0, 1): SRC, HeadRef(1, 0): SRC2}), tmp_path / "plan.safetensors")
    out = tmp_path / "cal.safetensors"
    args = ["calibrate", tiny_llama_dir, "--surrogates", str(src), "--out", str(out), "--steps", "4",
            "--eval-every", "2", "--max-texts", "4", "--max-tokens", "24", "--compare", "--json", "--no-progress"]
    assert main(args) == 0
    rep = json.loads(capsys.readouterr().out)
    plan = load_plan(out)
    assert set(plan.heads) == {"L0.H1", "L1.H0"} and all(h.surrogate is not None for h in plan.heads.values())
    assert not (tmp_path / "cal.safetensors.state.pt").exists() and (tmp_path / "cal.json").exists()
    md = (tmp_path / "cal.md").read_text()
    assert "L0.H1" in md and "0.5*(same_token)" in md and "plus a constant output" in md
    c = rep["compare"]
    assert c["base"] > 1 and all(c[k]["perplexity"] > 1 for k in ("explained", "calibrated", "optimal_ablation",
                                                                   "mean_ablation"))
    assert main(["calibrate", tiny_llama_dir, "--surrogates", str(src), "--out", str(src)]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_an_interrupted_calibration_resumes_to_the_same_result(tiny_llama_dir, tmp_path, monkeypatch):
    from headcode.runtime.calibration import fit as F

    lm = load_model(tiny_llama_dir)
    plan = make_plan(lm, {HeadRef(0, 1): SRC})
    fit, select = _texts(lm, 4, 7), _texts(lm, 2, 8)
    s = CalibrationSettings(steps=6, eval_every=2, patience=10, progress=False)
    whole = calibrate(lm, plan, fit, select, s)
    real, calls = F._log_probs, {"n": 0}

    def dies(model, ids):
        calls["n"] += 1
        if calls["n"] == 2 + len(select) * 3 + 5:  # mid-run, after two evaluations were saved
            raise KeyboardInterrupt
        return real(model, ids)

    monkeypatch.setattr(F, "_log_probs", dies)
    state = tmp_path / "cal.state.pt"
    with pytest.raises(KeyboardInterrupt):
        calibrate(lm, plan, fit, select, s, state_path=state)
    monkeypatch.setattr(F, "_log_probs", real)
    assert 0 < torch.load(state, weights_only=True)["step"] < 6
    again = calibrate(lm, plan, fit, select, s, state_path=state)
    assert again.plan.heads["L0.H1"].surrogate == whole.plan.heads["L0.H1"].surrogate
    assert again.report["history"] == whole.report["history"]


def test_a_malformed_surrogate_in_a_plan_file_is_refused_at_load(calibrated, tmp_path):
    from headcode.errors import HeadcodeError

    lm, plan, _ = calibrated
    for weights, constant in (([-1.0, 2.0], [0.0] * lm.head_dim), ([0.5], [0.0] * lm.head_dim),
                              ([0.5, 0.5], [float("nan")] * lm.head_dim)):
        bad = type(plan)(plan.model_id, plan.fingerprint,
                         {k: h.calibrated(weights, constant, "") for k, h in plan.heads.items()})
        path = save_plan(bad, tmp_path / "bad.safetensors")
        with pytest.raises(HeadcodeError, match="surrogate:") as e:
            load_plan(path)
        assert "\n" not in str(e.value)


def test_optimal_ablation_starts_at_mean_ablation_and_never_ends_worse_on_select(tiny_llama_dir):
    """The constants start at the heads' mean outputs: with no step they are those means, and the
    select split's early stopping keeps a fit only where it beats that start."""
    from headcode.runtime.calibration.fit import _mean_kl, _targets, fit_constants
    from headcode.runtime.evaluation.measures import head_output_means
    from headcode.runtime.surrogate.apply import apply_plan
    from headcode.runtime.surrogate.replacements import MeanHead

    lm = load_model(tiny_llama_dir)
    fit, select = _texts(lm, 6, 1), _texts(lm, 4, 2)
    heads = [HeadRef(0, 1), HeadRef(1, 2)]
    means = head_output_means(lm, fit)
    s = CalibrationSettings(steps=0, progress=False)
    at_start = fit_constants(lm, heads, fit, select, s, start=means)
    for h in heads:
        assert torch.allclose(at_start[h].double(), means[h.layer, h.head].double())

    def select_kl(constants) -> float:
        with apply_plan(lm.model, {h: MeanHead(constants[h]) for h in heads}):
            return _mean_kl(lm.model, select, base)

    base = _targets(lm.model, select)
    fitted = fit_constants(lm, heads, fit, select, dataclasses.replace(s, steps=40, eval_every=10, lr_constant=0.05), start=means)
    assert select_kl(fitted) <= select_kl({h: means[h.layer, h.head] for h in heads}) + 1e-6
