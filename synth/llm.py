"""The language-model backend: any OpenAI-compatible endpoint writes the programs.

For each head: prompt with the vocabulary and the head's summary (fit texts only), parse
the code blocks of the reply, run every program in the sandbox, then for a bounded number
of rounds show the model its best program and the rows where it is furthest off, and ask
for better ones. The programs are untrusted: they only ever run in ``compiler.sandbox``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from headcode.compiler.pattern import attention_from_scores
from headcode.compiler.sandbox import Limits, Vocabulary, run_programs
from headcode.errors import HeadcodeError
from headcode.runtime.model.heads import HeadRef
from headcode.runtime.model.patterns import HeadPatterns
from headcode.synth import prompts
from headcode.synth.backend import Rejected
from headcode.synth.scores import iou
from headcode.synth.summary import summarise

FALLBACKS = ("def attend(t):\n    return first(t)\n", "def attend(t):\n    return previous(t, 1)\n")


@dataclass
class LLMOptions:
    base_url: str | None = None
    model: str = "gpt-4o-mini"
    programs_per_reply: int = 3
    rounds: int = 2                # feedback rounds after the first reply
    temperature: float = 0.7
    max_fit_texts: int = 40        # fit texts the candidates are run on while writing
    timeout_s: float = 120.0
    limits: Limits = Limits()
    workers: int = 2
    max_programs_per_reply: int = 8   # programs taken from one reply (the rest are dropped)
    head_time_s: float = 600.0        # wall-clock budget per head: programs not run by then are refused
    vocabulary: Vocabulary | None = None  # the model's: programs are compiled against it (None: the texts' pieces)


class OpenAIBackend:
    """Programs written by a language model behind an OpenAI-compatible API."""

    name = "openai"

    def __init__(self, options: LLMOptions | None = None, progress: bool = True):
        import openai

        self.options = options or LLMOptions()
        self._openai = openai
        self.client = openai.OpenAI(base_url=self.options.base_url, api_key=self.client_key(),
                                    timeout=self.options.timeout_s, max_retries=1)
        self._cache: dict[tuple[str, int], np.ndarray | str] = {}
        self._deadline = float("inf")
        self.refused: dict[str, str] = {}  # source -> why the sandbox refused it (current head)
        self.log: list[dict] = []  # (head, round, prompt, reply) for inspection
        self.limiter: Callable[[], None] | None = None  # waits for a request slot (cluster-wide rate)

    # pickled to run on another process (``headcode.cluster``): the HTTP client is made anew there
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("client", "_openai", "limiter")}

    def __setstate__(self, state: dict) -> None:
        import openai

        self.__dict__.update(state, _openai=openai, limiter=None)
        self.client = openai.OpenAI(base_url=self.options.base_url, api_key=self.client_key(),
                                    timeout=self.options.timeout_s, max_retries=1)

    @staticmethod
    def client_key() -> str:
        return os.environ.get("OPENAI_API_KEY") or "sk-no-key-local-server"

    def prepare(self, patterns: HeadPatterns, heads: Sequence[HeadRef]) -> None:
        self.patterns = patterns

    # the endpoint ---------------------------------------------------------------------------
    def _ask(self, messages: list[dict]) -> str:
        o, url = self._openai, self.options.base_url or "https://api.openai.com/v1"
        if self.limiter is not None:
            self.limiter()
        try:
            r = self.client.chat.completions.create(model=self.options.model, messages=messages,
                                                    temperature=self.options.temperature)
        except o.APIConnectionError as e:
            raise HeadcodeError(f"cannot reach the OpenAI-compatible endpoint at {url} ({e}); start the "
                                "server, fix --base-url, or use --backend offline") from e
        except o.AuthenticationError as e:
            raise HeadcodeError(f"the endpoint at {url} refused the API key: set OPENAI_API_KEY") from e
        except o.NotFoundError as e:
            raise HeadcodeError(f"the endpoint at {url} has no model {self.options.model!r}: "
                                "pass --model with one it serves") from e
        except o.APIStatusError as e:
            raise HeadcodeError(f"the endpoint at {url} answered HTTP {e.status_code}: "
                                f"{str(e)[:200]}") from e
        if not r.choices:
            return ""
        return r.choices[0].message.content or ""

    # running programs -------------------------------------------------------------------------
    def _run(self, sources: Sequence[str], texts: Sequence[int]) -> None:
        todo = [s for s in dict.fromkeys(sources) if any((s, i) not in self._cache for i in texts)]
        if not todo:
            return
        toks = [self.patterns.tokens[i] for i in texts]
        step = max(1, self.options.workers)
        for k in range(0, len(todo), step):  # a batch at a time, so the head's time budget binds
            part = todo[k:k + step]
            if time.monotonic() > self._deadline:
                results = [None] * len(part)
            else:
                results = run_programs(part, toks, self.options.limits, workers=self.options.workers,
                                       vocabulary=self.options.vocabulary)
            self._keep(part, results, texts)

    def _keep(self, todo: Sequence[str], results: Sequence, texts: Sequence[int]) -> None:
        for src, res in zip(todo, results):
            if res is None:
                why = f"refused: the head's time limit ({self.options.head_time_s:g} s) was reached"
                self.refused[src] = why
                self._cache.update({(src, i): why for i in texts})
                continue
            if not res.ok:
                self.refused[src] = res.reason
            for j, i in enumerate(texts):
                self._cache[(src, i)] = (attention_from_scores(res.scores[j]).astype(np.float32)
                                         if res.ok else res.reason)

    def attention(self, source: str, texts: Sequence[int]) -> list[np.ndarray]:
        self._run([source], texts)
        out = []
        for i in texts:
            v = self._cache[(source, i)]
            if isinstance(v, str):
                raise Rejected(v)
            out.append(v)
        return out

    def _fit_iou(self, source: str, fit: Sequence[int], head: HeadRef) -> float:
        vals = []
        for i in fit:
            v = self._cache[(source, i)]
            if isinstance(v, str):
                return -1.0
            vals.append(iou(v, self.patterns.attention(i, head)))
        return float(np.mean(vals))

    # writing programs ---------------------------------------------------------------------------
    def propose(self, patterns: HeadPatterns, head: HeadRef) -> list[str]:
        self.patterns = patterns
        self._cache.clear()
        self.refused = {}
        o = self.options
        self._deadline = time.monotonic() + o.head_time_s
        fit = patterns.texts("fit")[:o.max_fit_texts]
        messages = [{"role": "system", "content": prompts.SYSTEM},
                    {"role": "user", "content": prompts.first_prompt(summarise(patterns, head),
                                                                     o.programs_per_reply)}]
        sources: list[str] = list(FALLBACKS)
        for rnd in range(o.rounds + 1):
            reply = self._ask(messages)
            self.log.append({"head": str(head), "round": rnd, "prompt": messages[-1]["content"],
                             "reply": reply})
            new = [s for s in prompts.code_blocks(reply) if s not in sources][:o.max_programs_per_reply]
            sources += new
            self._run(sources, fit)
            scored = sorted(((self._fit_iou(s, fit, head), s) for s in sources), key=lambda x: -x[0])
            if rnd == o.rounds or scored[0][0] < 0 or time.monotonic() > self._deadline:
                break
            best_iou, best = scored[0]
            att = self.attention(best, fit)
            worst = prompts.worst_rows([patterns.tokens[i] for i in fit],
                                       [patterns.attention(i, head) for i in fit], att)
            messages += [{"role": "assistant", "content": reply},
                         {"role": "user", "content": prompts.feedback_prompt(best, best_iou, worst,
                                                                             o.programs_per_reply)}]
        ok = [s for s in sources if self._fit_iou(s, fit, head) >= 0]
        return sorted(ok, key=lambda s: -self._fit_iou(s, fit, head))
