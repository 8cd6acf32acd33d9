"""explain_heads (resumable), the report files' schema, and the `headcode explain` command."""

import json

import pytest

from headcode.cli import main
from headcode.compiler.size import program_size
from headcode.synth.explain import explain_heads
from headcode.synth.offline import OfflineBackend
from headcode.synth.report import write_report
from headcode.synth.summary import summarise


class Counting(OfflineBackend):
    def __init__(self):
        super().__init__(progress=False)
        self.proposed = []

    def front(self, patterns, head):
        self.proposed.append(str(head))
        return super().front(patterns, head)


def test_explain_resumes_from_state(planted, tmp_path):
    b = Counting()
    first = explain_heads(planted, b, planted.heads[:2], state_dir=tmp_path, progress=False)
    assert sorted(b.proposed) == ["L0.H0", "L0.H1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["L0.H0.json", "L0.H1.json"]
    b2 = Counting()
    again = explain_heads(planted, b2, planted.heads, state_dir=tmp_path, progress=False)
    assert b2.proposed == ["L1.H0"]  # the two finished heads were not redone
    a, f = again["L0.H0"], first["L0.H0"]  # the same program, scored again (through the reference path)
    assert (a.source, a.size, a.description, a.front) == (f.source, f.size, f.description, f.front)
    assert a.iou == pytest.approx(f.iou, abs=1e-6) and a.output_error == pytest.approx(f.output_error, abs=1e-6)


def test_report_schema_and_files(planted, tmp_path):
    b = OfflineBackend(progress=False)
    res = explain_heads(planted, b, state_dir=None, progress=False)
    i = planted.texts("test")[0]

    def example(head, src):
        from headcode.runtime.model.heads import HeadRef
        return planted.attention(i, HeadRef.parse(head)), b.attention(src, [i])[0]

    write_report(tmp_path, "synthetic", "planted", "paragraph", res, example)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert set(rep) == {"model", "corpus", "unit", "heads", "summary", "plots"}
    assert {"mean_iou_test", "share_iou_test_over_0.75", "n_programs", "median_size", "max_size",
            "share_at_most_4_terms", "longest_word_list", "median_output_error_test"} <= set(rep["summary"])
    assert [h["head"] for h in rep["heads"]] == ["L0.H0", "L0.H1", "L1.H0"]
    for h in rep["heads"]:
        assert set(h) == {"head", "program", "expression", "description", "size", "terms", "iou",
                          "output_error", "jsd", "front"}
        assert set(h["iou"]) == {"fit", "select", "test"} and set(h["output_error"]) == {"select", "test"}
        assert h["iou"]["test"] > 0.99
        src = (tmp_path / "programs" / f"{h['head']}.py").read_text()
        assert src.startswith(f"# head {h['head']}") and "def attend(t):" in src
        assert f"size {h['size']} " in src and h["size"] == program_size(src).nodes
        assert h["description"] and f'"""{h["description"]}"""' in src  # the description is the docstring
        sizes = [p["size"] for p in h["front"]]
        fid = [p["fidelity"] for p in h["front"]]
        assert sizes == sorted(sizes) and fid == sorted(fid) and h["size"] in sizes  # a front, chosen from it
    assert rep["summary"]["n_programs"] == 3 and rep["summary"]["share_iou_test_over_0.75"] == 1.0
    md = (tmp_path / "report.md").read_text()
    assert "[L0.H1](programs/L0.H1.py)" in md and "70% the previous token, 30% the first token" in md
    assert "![" in md  # heatmaps are shown
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert "iou_test_hist.png" in plots and any(p.startswith("worst_") for p in plots)
    assert not [p for p in tmp_path.rglob(".*tmp*")]  # temp files were moved into place


def test_explain_command_on_a_patterns_file(planted, tmp_path, capsys):
    f = tmp_path / "p.safetensors"
    planted.save(str(f))
    out = tmp_path / "out"
    assert main(["explain", "--patterns", str(f), "--out", str(out), "--heads", "L0.H0,L1.H0",
                 "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["mean_iou_test"] > 0.99
    assert sorted(p.name for p in (out / "programs").iterdir()) == ["L0.H0.py", "L1.H0.py"]
    assert main(["explain", "--patterns", str(f), "--out", str(out), "--max-programs", "0"]) == 1


def test_summary_of_a_previous_token_head(planted):
    s = summarise(planted, planted.heads[0])
    assert s.offset_mass[1] == pytest.approx(0.7, abs=0.05)  # 0.7 * previous + 0.3 * first
    assert s.first_mass > 0.3
    assert len(s.pairs) == len(planted.texts("fit")) and all("|" in p and ":" in p for p in s.pairs[0])
    assert "by offset" in s.text()
