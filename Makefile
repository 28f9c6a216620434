# Two commands on a fresh machine:
#   make dev    runs s3proxy on an embedded on-disk S3 store with a local key
#   make test   runs the test suite (installs what it needs first)
# and: make shell   a shell with .venv/bin (s3proxy, aws) on PATH
#      make test-fast   the unit and fuzz tests only (no servers), under a minute
#      make test-moto / test-rclone / test-strict   the whole suite on one backend kind
#      make dev ARGS="--listen 127.0.0.1:9080 --tls"   (or S3PROXY_LISTEN=... make dev)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: dev test test-strict test-moto test-rclone test-smoke test-fast install install-test shell system-deps lint bench bench-full clean fuzz

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# `make dev` needs the runtime and the AWS CLI its printed example lines use;
# `make test` the test extras too.  Separate stamps: `make test` after
# `make dev` still installs the test extras.
$(VENV)/.installed-runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e . 'awscli>=1.33'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed-runtime

install: $(VENV)/.installed-runtime

install-test: $(VENV)/.installed-test

system-deps:
	@scripts/system-deps.sh

dev: install
	$(BIN)/s3proxy dev $(ARGS)

shell: install
	@echo "$(VENV)/bin is on PATH in this shell (s3proxy, aws); 'exit' leaves it"
	@VIRTUAL_ENV="$(abspath $(VENV))" PATH="$(abspath $(BIN)):$$PATH" $${SHELL:-/bin/sh}

# The backend matrix (tests/conftest.py, S3PROXY_TEST_BACKEND=strict|moto|rclone): `make test`
# runs the whole suite on the strict backend (s3proxy's embedded store, which refuses what AWS
# refuses), then the integration smoke subset (`-m smoke`) on moto and on `rclone serve s3`.
# With S3PROXY_TEST_BACKEND_URL set (MinIO, AWS) it runs the whole suite there, once.
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider

ifdef S3PROXY_TEST_BACKEND_URL
test: install-test system-deps
	$(PYTEST)
else
test: install-test system-deps
	S3PROXY_TEST_BACKEND=strict $(PYTEST)
	$(MAKE) --no-print-directory test-smoke
endif

test-smoke: install-test
	S3PROXY_TEST_BACKEND=moto $(PYTEST) -m smoke tests/integration
	S3PROXY_TEST_BACKEND=rclone $(PYTEST) -m smoke tests/integration

test-strict test-moto test-rclone: install-test system-deps
	S3PROXY_TEST_BACKEND=$(@:test-%=%) $(PYTEST)

# The quick lane: unit and fuzz tests (no servers, no SoftHSM), fuzzers at 50 examples,
# nothing marked `slow`.  `make test` still runs everything.
test-fast: install-test
	S3PROXY_FUZZ_EXAMPLES=50 $(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow" tests/unit tests/fuzz

# Property-based fuzzing of the parsers and format readers, 100x the examples `make test` runs.
fuzz: install-test
	S3PROXY_FUZZ_EXAMPLES=20000 $(BIN)/python -m pytest -q -p no:cacheprovider tests/fuzz tests/unit/test_xmlsafe.py

bench: install-test
	$(BIN)/python -m bench --quick

bench-full: install-test
	$(BIN)/python -m bench --full

# ruff and mypy --strict over the package (dev extras).
lint: install-test
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/ruff check s3proxy
	$(BIN)/mypy s3proxy

clean:
	rm -rf $(VENV) .s3proxy-dev .pytest_cache
