"""The shared program catalogue lives in ``headcode.benchmarks.catalogue`` (``benchmarks/catalogue.py``):
tests and benchmarks import the same cases. This module keeps ``from catalogue import ...`` working
for the test folders that put ``tests/`` on their path."""

from headcode.benchmarks.catalogue import BY_NAME, PROGRAMS, REJECTED, VOCAB, Case, random_ids

__all__ = ["BY_NAME", "PROGRAMS", "REJECTED", "VOCAB", "Case", "random_ids"]
