"""Reports of an explain run: programs, ``report.json``, ``report.md`` and plots.

``DIR/programs/L<l>.H<h>.py``  the chosen program with its scores in a header comment
``DIR/report.json``            ``{"model", "corpus", "unit", "heads": [...], "summary": {...}}``
``DIR/report.md``              a readable table
``DIR/plots/``                 true vs program heatmaps (best and worst heads), test IoU histogram

Every file is written to a temporary name, then moved into place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headcode.compiler.size import program_size
from headcode.files import save_figure, write_json, write_text
from headcode.printable import printable
from headcode.runtime.model.heads import HeadRef
from headcode.synth.backend import Candidate
from headcode.synth.occam import TOLERANCE

IOU_GOOD = 0.75


def _f(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def report_dict(model: str, corpus: str, unit: str, results: dict[str, Candidate]) -> dict[str, Any]:
    heads = []
    for h in sorted(results, key=HeadRef.parse):
        c = results[h]
        heads.append({
            "head": h, "program": c.program, "expression": expression(c.source),
            "description": c.description, "size": c.size, "terms": c.terms,
            "iou": {s: _f(c.iou.get(s)) for s in ("fit", "select", "test")},
            "output_error": {s: _f(c.output_error.get(s)) for s in ("select", "test")},
            "jsd": {"test": _f(c.jsd.get("test"))},
            "front": c.front,
        })
    return {"model": model, "corpus": corpus, "unit": unit, "heads": heads, "summary": summary(results)}


def summary(results: dict[str, Candidate]) -> dict[str, Any]:
    """Fidelity and readability of a run (sizes as ``compiler.size`` defines them)."""
    test = [c.iou["test"] for c in results.values() if "test" in c.iou]
    err = [c.output_error["test"] for c in results.values() if "test" in c.output_error]
    sizes = [program_size(c.source) for c in results.values()]
    return {
        "mean_iou_test": _f(np.mean(test)) if test else None,
        "share_iou_test_over_0.75": _f(np.mean([x > IOU_GOOD for x in test])) if test else None,
        "median_output_error_test": _f(np.median(err)) if err else None,
        "heads_output_error_test_over_1": int(sum(e > 1.0 for e in err)),
        "n_programs": len({c.source for c in results.values()}),
        "median_size": _f(np.median([z.nodes for z in sizes])) if sizes else None,
        "max_size": max((z.nodes for z in sizes), default=None),
        "share_at_most_4_terms": _f(np.mean([z.terms <= 4 for z in sizes])) if sizes else None,
        "longest_word_list": max((z.longest_list for z in sizes), default=None),
        "fidelity": f"select fidelity = 0.5 * IoU + 0.5 * max(0, 1 - output error); the smallest program "
                    f"within {TOLERANCE} of the best is chosen (synth.occam)",
    }


def expression(source: str) -> str:
    """The expression ``attend`` returns, on one line (for tables)."""
    import ast

    try:
        fn = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef))
        ret = next(n for n in fn.body if isinstance(n, ast.Return) and n.value is not None)
        return ast.unparse(ret.value)
    except (SyntaxError, StopIteration):
        return " ".join(source.split())


def program_file(c: Candidate) -> str:
    lines = [f"# head {c.head}: program {c.program}, size {c.size} (AST nodes of attend's body), "
             f"{c.terms} selector terms"]
    lines.append("# IoU " + ", ".join(f"{s} {c.iou[s]:.3f}" for s in ("fit", "select", "test") if s in c.iou))
    if "test" in c.output_error:
        lines.append(f"# test output error {c.output_error['test']:.3f}, test JSD {c.jsd.get('test', float('nan')):.3f}")
    return "\n".join(lines) + "\n\n" + c.source


def markdown(rep: dict[str, Any]) -> str:
    s = rep["summary"]
    out = [f"# headcode explain: {rep['model']} on {rep['corpus']} ({rep['unit']})", ""]
    if s["mean_iou_test"] is not None:
        out += [f"- mean test IoU: **{s['mean_iou_test']:.3f}**",
                f"- heads with test IoU > {IOU_GOOD}: {100 * s['share_iou_test_over_0.75']:.0f}%"]
    if s.get("median_output_error_test") is not None:
        out.append(f"- median test output error: {s['median_output_error_test']:.3f} "
                   f"({s['heads_output_error_test_over_1']} heads above 1.0)")
    if s.get("median_size") is not None:
        out.append(f"- program size (AST nodes of `attend`'s body): median {s['median_size']:g}, "
                   f"largest {s['max_size']}; heads with at most 4 selector terms: "
                   f"{100 * s['share_at_most_4_terms']:.0f}%; longest word list: {s['longest_word_list']}")
        out.append(f"- choice: {s['fidelity']}")
    out += [f"- distinct programs: {s['n_programs']}", ""]
    out += _heatmap_lines(rep)
    out += ["| head | program | description | size | IoU select | IoU test | output error (test) | JSD (test) |",
            "|---|---|---|---|---|---|---|---|"]

    def g(x: float | None) -> str:
        return "" if x is None else f"{x:.3f}"

    for h in rep["heads"]:
        expr = printable(h["expression"]).replace("|", "\\|")
        out.append(f"| [{h['head']}](programs/{h['head']}.py) | `{expr}` | {h['description']} | {h['size']} | "
                   f"{g(h['iou']['select'])} | {g(h['iou']['test'])} | {g(h['output_error']['test'])} | "
                   f"{g(h['jsd']['test'])} |")
    return "\n".join(out) + "\n"


def _heatmap_lines(rep: dict[str, Any]) -> list[str]:
    shown = rep.get("plots", [])
    if not shown:
        return []
    out = ["True attention (left) against the program's (right) on a test text:", ""]
    out += [f"![{p}](plots/{p})" for p in shown]
    return out + [""]


def plots(out: Path, results: dict[str, Candidate],
          example: Callable[[str, str], tuple[np.ndarray, np.ndarray]] | None, n_each: int = 3) -> list[Path]:
    """Histogram of test IoU and, when ``example`` gives ``(true, program)`` for a head and its
    source on a test text, heatmaps for the best and worst heads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    test = [c.iou["test"] for c in results.values() if "test" in c.iou]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(test, bins=20, range=(0, 1))
    ax.set_xlabel("test IoU")
    ax.set_ylabel("heads")
    fig.tight_layout()
    save_figure(fig, out / "plots" / "iou_test_hist.png", dpi=90)
    plt.close(fig)
    written.append(out / "plots" / "iou_test_hist.png")
    if example is None:
        return written
    ranked = sorted((c for c in results.values() if "test" in c.iou), key=lambda c: c.iou["test"])
    by_head = sorted(ranked, key=lambda c: HeadRef.parse(c.head))
    sample = by_head[:: max(1, len(by_head) // n_each)][:n_each] if by_head else []
    picks: Sequence[tuple[str, Candidate]] = [("worst", c) for c in ranked[:n_each]] + \
        [("best", c) for c in ranked[::-1][:n_each]] + [("sample", c) for c in sample]
    for tag, c in picks:
        true, prog = example(c.head, c.source)
        fig, axes = plt.subplots(1, 2, figsize=(8, 4))
        for ax, m, title in zip(axes, (true, prog), ("true", "program")):
            ax.imshow(m, cmap="viridis", vmin=0, vmax=max(float(true.max()), 1e-6))
            ax.set_title(f"{c.head} {title}")
            ax.set_xlabel("key")
            ax.set_ylabel("query")
        fig.suptitle(f"{tag} {c.head}: size {c.size}, test IoU {c.iou['test']:.3f}, output error "
                     f"{c.output_error.get('test', float('nan')):.3f}\n{c.description[:110]}", fontsize=8)
        fig.tight_layout()
        path = out / "plots" / f"{tag}_{c.head}.png"
        save_figure(fig, path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def write_report(out: Path, model: str, corpus: str, unit: str, results: dict[str, Candidate],
                 example: Callable[[str, str], tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, Any]:
    """Write programs, report.json, report.md and plots under ``out``; returns the report dict."""
    out = Path(out)
    for h, c in results.items():
        write_text(out / "programs" / f"{h}.py", program_file(c))
    rep = report_dict(model, corpus, unit, results)
    written = plots(out, results, example)
    rep["plots"] = [p.name for p in written if p.name != "iou_test_hist.png"]
    write_json(out / "report.json", rep)
    write_text(out / "report.md", markdown(rep))
    return rep
