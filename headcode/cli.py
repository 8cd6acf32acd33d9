"""The ``headcode`` command line. Each subcommand is a module in ``headcode/commands/`` with
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

# numpy's OpenBLAS spins its threads: beside torch on a small machine that made the offline
# search's small products ~450x slower (measured). Must be set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from headcode.errors import HeadcodeError

DESCRIPTION = """\
headcode explains the attention heads of a language model as short Python programs,
compiles them into kernels, and runs the model with the programs in place of the heads.

Typical flow on the default model (SmolLM2-135M, bundled, no network needed):
  headcode heads
  headcode capture --corpus stories --unit paragraph --out patterns.safetensors
  headcode explain --corpus stories --out out/explain
  headcode compile out/explain
  headcode evaluate --surrogates out/explain/surrogates.safetensors --fraction 0.25 --out eval.json
"""


def build_parser() -> argparse.ArgumentParser:
    import headcode.commands as pkg

    parser = argparse.ArgumentParser(prog="headcode", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"headcode.commands.{info.name}")
        p = sub.add_parser(info.name.replace("_", "-"), help=mod.HELP, description=mod.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except HeadcodeError as e:
        from headcode.printable import printable

        print(f"headcode: error: {printable(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("headcode: interrupted (partial work is kept where the command says it resumes)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
