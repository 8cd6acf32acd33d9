"""headcode.benchmarks: the benchmark cases (``cases``: one head, memory, compile time;
``model_cases``: a layer, prefill, generation, synthesis; ``decode_cases``: decoding through the
headcode cache) and the program catalogue (``catalogue``), shared by the pytest-benchmark suites
in this folder (``pytest benchmarks/ --benchmark-only``) and ``headcode bench``."""
