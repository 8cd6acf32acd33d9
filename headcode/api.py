"""The public ``from_pretrained``: a transformers model with a surrogate plan in place.

    model = headcode.from_pretrained("smollm2-135m", surrogates="out/explain/surrogates.safetensors")
    tok = headcode.load_tokenizer("smollm2-135m")
    model.generate(**tok("Once upon a time", return_tensors="pt"), max_new_tokens=20)

The result is the plain transformers model (``generate``, pipelines and other tools work
unchanged); ``model.headcode_handle.remove()`` puts the neural heads back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from headcode.runtime.model.loading import DEFAULT_MODEL


def load_surrogate_model(model: str = DEFAULT_MODEL, surrogates: Any = None, heads: Iterable[str] | None = None,
                         backend: str = "numba", dtype: Any = None) -> Any:
    """``(LoadedModel, SurrogateHandle)``: ``model`` loaded with the plan in ``surrogates`` (a
    ``surrogates.safetensors`` path or a ``SurrogatePlan``) applied; ``heads`` keeps only those
    (``"L3.H7"`` names or ``HeadRef``)."""
    from headcode.runtime.model.loading import load_model
    from headcode.runtime.surrogate.apply import apply_plan, build_surrogates, plan_for_model

    lm = load_model(model, dtype=dtype)
    if surrogates is None:
        return lm, None
    plan = plan_for_model(surrogates, lm)
    handle = apply_plan(lm.model, build_surrogates(plan, lm, backend=backend, heads=heads))
    return lm, handle


def from_pretrained(model: str = DEFAULT_MODEL, surrogates: Any = None, heads: Iterable[str] | None = None,
                    backend: str = "numba", dtype: Any = None) -> Any:
    """A transformers causal LM (headcode's attention in use) with the surrogate plan applied.

    ``model``: ``smollm2-135m`` (bundled), a hub id, a checkpoint directory or a ``.gguf``;
    ``surrogates``: a plan file from ``headcode compile`` (or a ``SurrogatePlan``); a plan for
    another model or tokenizer raises ``HeadcodeError``. ``backend``: ``numba`` (CPU) or
    ``triton`` (GPU). Attributes added: ``headcode_tokenizer``, and with a plan
    ``headcode_handle`` (``.remove()`` puts the neural heads back and removes it; ``.heads``).
    """
    lm, _ = load_surrogate_model(model, surrogates, heads, backend, dtype)
    lm.model.__dict__["headcode_tokenizer"] = lm.tokenizer
    return lm.model
