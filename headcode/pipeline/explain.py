"""Explain heads: capture (or reuse the capture kept in the output directory), search programs
per head (offline or through an OpenAI-compatible model), rank them on held-out text, and write
the programs, the report and the plots. Resumable: the capture and every finished head are kept."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from headcode.errors import HeadcodeError
from headcode.runtime.model.loading import DEFAULT_MODEL

CAPTURE_FILE, RUN_FILE = "patterns.safetensors", "run.json"


@dataclass(frozen=True)
class ExplainSettings:
    out: Path                        # output directory
    model: str = DEFAULT_MODEL
    corpus: str = "stories"
    unit: str = "paragraph"
    heads: str | None = None         # all, or e.g. L3.H7,L5,L2-4
    backend: str = "offline"         # or openai
    base_url: str | None = None      # the OpenAI-compatible endpoint (openai backend)
    llm: str = "gpt-4o-mini"         # the model name at that endpoint
    max_programs: int = 1000         # library size cap
    max_texts: int | None = 100      # per split
    max_tokens: int = 256            # per text
    rounds: int = 2                  # feedback rounds per head (openai backend)
    max_programs_per_reply: int = 8  # programs taken from one reply (openai backend)
    head_time_limit: float = 600.0   # seconds per head: programs not run by then are refused (openai backend)
    patterns: str | None = None      # a captured patterns file to use instead of capturing
    progress: bool = True
    cluster: str | None = None       # ray | ray:ADDRESS: one task per head on a Ray cluster (headcode.cluster)
    llm_per_minute: float | None = None  # LLM requests per minute, all workers together (cluster only)


@dataclass(frozen=True)
class ExplainResult:
    out: Path                        # programs/, report.json, report.md, plots/
    model: str
    heads: int                       # heads explained
    summary: dict[str, Any] = field(default_factory=dict)   # report.json's summary

    @property
    def report(self) -> Path:
        return self.out / "report.md"


def _run_settings(s: ExplainSettings) -> dict[str, Any]:
    """What a kept capture depends on (``run.json``)."""
    return {k: v for k, v in asdict(s).items() if k in ("model", "corpus", "unit", "heads", "max_texts", "max_tokens")}


def captured_patterns(s: ExplainSettings, loaded: Any = None) -> tuple[Any, str, tuple[Any, ...]]:
    """``(HeadPatterns, model name, heads to explain)``: from ``s.patterns``, from the capture kept
    in ``s.out``, or captured now (then kept there)."""
    from headcode.files import write_json
    from headcode.pipeline.capture import CaptureSettings, capture_corpus
    from headcode.runtime.model.heads import parse_heads
    from headcode.runtime.model.patterns import HeadPatterns

    if s.patterns:
        hp = HeadPatterns.load(s.patterns)
        layers, per = max(h.layer for h in hp.heads) + 1, max(h.head for h in hp.heads) + 1
        return hp, hp.model, parse_heads(s.heads, layers, per) if s.heads else hp.heads
    out = Path(s.out)
    cache, run = out / CAPTURE_FILE, out / RUN_FILE
    meta = _run_settings(s)
    if run.exists():
        old = json.loads(run.read_text())
        if {k: old.get(k) for k in meta} != meta:
            raise HeadcodeError(f"{out} holds a run with other settings ({old}); use another --out")
        if cache.exists():
            hp = HeadPatterns.load(str(cache))
            return hp, hp.model, hp.heads
    hp = capture_corpus(CaptureSettings(model=s.model, corpus=s.corpus, unit=s.unit, heads=s.heads,
                                        max_texts=s.max_texts, max_tokens=s.max_tokens, progress=s.progress), loaded)
    hp.save(str(cache))
    write_json(run, meta)
    return hp, hp.model, hp.heads


def model_vocabulary(s: ExplainSettings, hp: Any, loaded: Any = None) -> Any:
    """The vocabulary of the model that captured ``hp`` (``sandbox.Vocabulary``): programs are
    compiled against it in explain as ``compile`` compiles them, so what explain scores is what
    a plan runs. The tokenizer tried: ``loaded``'s, else the patterns' model's, then the model
    given (unless it is only the default); the first whose ids name the captured texts' pieces.
    ``None`` (with a warning) when there is none, as for synthetic patterns: then programs are
    compiled against the texts' own pieces."""
    import warnings

    from headcode.compiler.sandbox import Vocabulary
    from headcode.runtime.model.loading import load_tokenizer

    given = [] if s.patterns and s.model == DEFAULT_MODEL else [s.model]
    tried = []
    for spec in [None] if loaded is not None else dict.fromkeys([hp.model, *given]):
        try:
            vocab = Vocabulary.of_tokenizer(loaded.tokenizer if spec is None else load_tokenizer(spec))
            for t in hp.tokens:
                vocab.ids(t)
            return vocab
        except (HeadcodeError, ValueError) as e:
            tried.append(f"{spec or 'the loaded model'}: {str(e)[:120]}")
    warnings.warn(f"headcode explain: no tokenizer for the captured texts ({'; '.join(tried)}); programs are "
                  "compiled against the texts' own pieces, not the model's vocabulary, so a predicate that "
                  "keeps state may compile otherwise for the model: give the model that captured the texts "
                  "as the first argument", RuntimeWarning, stacklevel=2)
    return None


def make_backend(s: ExplainSettings, vocabulary: Any = None) -> Any:
    if s.backend == "offline":
        from headcode.synth.offline import OfflineBackend

        return OfflineBackend(progress=False, vocabulary=vocabulary)  # explain_heads shows the one bar
    if s.backend == "openai":
        from headcode.synth.llm import LLMOptions, OpenAIBackend

        return OpenAIBackend(LLMOptions(base_url=s.base_url, model=s.llm, rounds=s.rounds,
                                        max_programs_per_reply=s.max_programs_per_reply,
                                        head_time_s=s.head_time_limit, vocabulary=vocabulary))
    raise HeadcodeError(f"unknown backend {s.backend!r}: use offline or openai")


def _runner(s: ExplainSettings) -> dict[str, Any]:
    """``{"run": the per-head search runner}`` for ``s.cluster`` (Ray imported only then), or ``{}``."""
    from headcode.cluster import parse_cluster

    spec = parse_cluster(s.cluster)
    if spec is None:
        if s.llm_per_minute:
            raise HeadcodeError("--llm-per-minute limits the requests of a cluster's workers: give --cluster too")
        return {}
    from headcode.cluster.explain import head_runner

    return {"run": head_runner(spec, s.llm_per_minute)}


def explain_model(s: ExplainSettings, loaded: Any = None) -> ExplainResult:
    """Programs for ``s.heads`` of ``s.model``: written on the fit split, chosen on the select
    split, reported on the test split. ``loaded``: the model, when already loaded."""
    from headcode.runtime.model.heads import HeadRef
    from headcode.synth.explain import explain_heads
    from headcode.synth.report import write_report

    if s.max_programs < 1:
        raise HeadcodeError("--max-programs must be at least 1")
    runner = _runner(s)  # a bad --cluster (or no Ray) is said before anything loads
    out = Path(s.out)
    hp, model_name, heads = captured_patterns(s, loaded)
    if not hp.texts("fit") or not hp.texts("select") or not hp.texts("test"):
        raise HeadcodeError("the captured texts must cover the fit, select and test splits: "
                            "use a larger corpus or a larger --max-texts")
    backend = make_backend(s, model_vocabulary(s, hp, loaded))
    results = explain_heads(hp, backend, heads, state_dir=out / "state", max_programs=s.max_programs,
                            progress=s.progress, **runner)
    if not results:
        raise HeadcodeError("no head could be explained (see the messages above)")
    test_text = hp.texts("test")[0]

    def example(head: str, source: str) -> Any:
        return hp.attention(test_text, HeadRef.parse(head)), backend.attention(source, [test_text])[0]

    rep = write_report(out, model_name, s.patterns or s.corpus, hp.unit, results, example)
    return ExplainResult(out, model_name, len(results), rep["summary"])
