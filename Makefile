# image-interpreter: `make demo` runs the pipeline on the tiny profile; `make test` runs the tests.
SHELL := bash
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= tiny
PYTEST_ARGS ?=

.PHONY: setup weights archive serve stop demo test lint bench clean

setup: $(VENV)/.installed client/stubs/.stamp

$(VENV)/.installed: requirements.txt pyproject.toml
	@command -v java >/dev/null && java -version 2>&1 | awk -F'"' '/version/ { split($$2, v, "."); exit !(v[1] >= 17) }' \
	  || { echo "error: TorchServe needs Java 17+ (Debian/Ubuntu: sudo apt-get install openjdk-17-jre-headless)"; exit 1; }
	@command -v curl >/dev/null || { echo "error: the scripts need curl (apt-get install curl)"; exit 1; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# the project's own packages (handlers, workflows, client), editable: workers import them from here
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# gRPC stubs from the installed TorchServe's protos (generated, gitignored)
client/stubs/.stamp: $(VENV)/.installed scripts/gen_grpc_stubs.sh
	scripts/gen_grpc_stubs.sh
	touch $@

weights: setup
	scripts/build_models.sh --profile $(PROFILE)

archive: weights
	scripts/archive.sh --profile $(PROFILE)

serve: archive
	scripts/serve.sh

stop:
	scripts/stop.sh

demo: setup
	scripts/demo.sh

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

# ruff (lint + format check) and mypy, configured in pyproject.toml; CI runs it before the tests
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check handlers workflows client
	$(VENV)/bin/mypy

bench: setup
	$(PY) -m pip install --quiet -r benchmarks/requirements.txt
	$(PY) benchmarks/run.py

clean:
	rm -rf model_store/*.mar model_store/*.war outputs .run logs
