# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The shared corpora beside the checkout, when they are there; tests that need them skip otherwise.
NMT_DATA_DIR ?= $(wildcard $(abspath ../shared/data))
ifneq ($(NMT_DATA_DIR),)
export NMT_DATA_DIR
endif

.PHONY: demo test install clean

$(BIN)/nmt: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(BIN)/nmt

install: $(BIN)/nmt

demo: install
	PATH=$(abspath $(BIN)):$$PATH bash recipes/multi30k/demo.sh

test: install
	$(BIN)/python -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo 'no tests were collected' >&2; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) exp
