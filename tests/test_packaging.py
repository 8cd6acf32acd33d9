"""Packaging: our folders install under ``headcode.*`` and never shadow other packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_transformers_from_repo_root_is_not_fooled_by_our_kernels_folder():
    """With the repo root on sys.path, transformers probes a top-level ``kernels`` (the HF
    package) and may import our folder to read a version: it must find none, do nothing,
    and conclude that the HF kernels package is not available."""
    code = ("import sys, transformers, transformers.modeling_utils\n"
            "from transformers.utils import is_kernels_available\n"
            "m = sys.modules.get('kernels')\n"
            "names = sorted(k for k in vars(m) if not k.startswith('__')) if m else []\n"
            "print(is_kernels_available(), getattr(m, '__version__', None), names)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "None", "[]"], out.stdout


def test_this_test_run_does_not_see_our_folder_as_top_level_kernels():
    m = sys.modules.get("kernels")
    assert m is None or Path(getattr(m, "__file__", "") or "").parent != ROOT / "kernels"


def test_folders_map_to_headcode_subpackages():
    import headcode.compiler
    import headcode.kernels
    import headcode.runtime
    import headcode.synth

    for mod, folder in [(headcode.runtime, "runtime"), (headcode.compiler, "compiler"),
                        (headcode.kernels, "kernels"), (headcode.synth, "synth")]:
        assert Path(mod.__file__).resolve().parent == ROOT / folder


def test_kernels_init_has_no_version_and_no_side_effects():
    import ast

    tree = ast.parse((ROOT / "kernels" / "__init__.py").read_text())
    # a docstring at most: no imports, no assignments (no __version__), no calls
    assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in tree.body)


def test_public_api_names_resolve_lazily():
    """Every name of ``headcode.__all__`` resolves to what its module defines, and importing headcode
    alone imports no torch (a fresh interpreter)."""
    import importlib

    import headcode

    assert {"capture", "explain_model", "compile_programs", "from_pretrained", "apply_plan"} <= set(headcode.__all__)
    for name in headcode.__all__:
        obj = getattr(headcode, name)
        assert obj is getattr(importlib.import_module(headcode._API[name]), name), name
    code = "import sys, headcode; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_every_package_folder_is_listed_for_the_wheel():
    """``pyproject.toml`` lists packages by hand (folders map into ``headcode.*``): a folder with an
    ``__init__.py`` that is not listed would be missing from a wheel (it still imports in an
    editable install, so nothing else would notice)."""
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    for pkg, folder in cfg["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            if "__pycache__" not in rel:
                assert ".".join((pkg, *rel)) in listed, f"{init.parent} is not in pyproject's packages"
