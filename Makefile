# Two commands on a fresh machine:
#   make dev    runs s3proxy on an embedded on-disk S3 store with a local key
#   make test   runs the test suite (installs what it needs first)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: dev test install system-deps lint bench bench-full clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

system-deps:
	@scripts/system-deps.sh

dev: install
	$(BIN)/s3proxy dev

test: install system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: install
	$(BIN)/python -m bench --quick

bench-full: install
	$(BIN)/python -m bench --full

clean:
	rm -rf $(VENV) .s3proxy-dev .pytest_cache
