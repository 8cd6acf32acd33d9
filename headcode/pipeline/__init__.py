"""headcode's steps as library functions, one module each: typed settings in (frozen
dataclasses), typed results out; nothing printed but progress bars. The ``headcode`` commands
parse arguments into these settings and print the results; ``demo`` chains them.

    capture  -> HeadPatterns                  (capture.capture_corpus)
    explain  -> programs, report              (explain.explain_model)
    compile  -> surrogates.safetensors        (compile.compile_programs)
    evaluate -> perplexity, QA, plot          (evaluate.evaluate_plan)
    bench    -> timings                       (bench.run_benchmarks)
    serve    -> an OpenAI-compatible server   (serve.start_server)
    demo     -> explain, compile, evaluate    (demo.run_demo)
"""
