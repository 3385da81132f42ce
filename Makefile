# Set-up and checks. `make run` and `make check` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= runs/default

.PHONY: install run check test lint types clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU build of torch first (pinned in constraints.txt), then the package and extras.
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,plot,nlp]'
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/universal-neurons run --out $(OUT)

lint: install
	$(BIN)/ruff check src tests benchmarks scripts

types: install
	$(BIN)/mypy

test: install
	$(BIN)/python -m pytest -q

check: lint types test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
