# Everything runs from a local virtual environment that the targets create themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint clean prometheus chromium bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: one simulated day end to end (SQLite ledger, bundled simulators)
demo: $(STAMP)
	$(BIN)/doseline demo $(ARGS)

## bench: measured performance as one JSON report (docs/performance.md); add PostgreSQL
## with ARGS="--db postgresql://127.0.0.1:5432/test", one phase with ARGS="--only ledger"
bench: $(STAMP)
	$(BIN)/doseline bench $(ARGS)

## test: the whole test suite (PostgreSQL tests skip when no server answers, except under CI=true)
test: $(STAMP) prometheus chromium
	$(BIN)/pytest $(ARGS)

## prometheus: promtool for the alert-rule tests (Debian's prometheus package, when missing
## and installable; otherwise those tests skip, except under CI=true where they fail)
prometheus:
	@.ci/install-prometheus || echo "promtool missing: the alert-rule tests will skip (fail under CI=true)"

## chromium: Debian's chromium for the console's browser tests (tests/console), when
## missing and installable; otherwise those tests skip, except under CI=true where they fail
chromium:
	@.ci/install-chromium || echo "chromium missing: the browser tests will skip (fail under CI=true)"

## test-fast: unit tests only
test-fast: $(STAMP)
	$(BIN)/pytest tests/unit $(ARGS)

## lint: ruff, mypy and the import contracts of pyproject.toml (docs/architecture.md)
lint: $(STAMP)
	$(BIN)/ruff check controller drivers simulators tests
	$(BIN)/mypy controller drivers simulators
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .mypy_cache .ruff_cache
