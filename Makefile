# The two commands of the README:
#   make demo   set up .venv and run the main job on the embedded default (no services needed)
#   make test   the whole test suite: lint, types, import contracts, pytest (needs PostgreSQL and Redis)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint install docs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/evalsvc demo

lint: $(STAMP)
	$(BIN)/ruff check evalsvc scorers connectors tests bench
	$(BIN)/ruff format --check evalsvc scorers connectors tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	@# pytest exits 5 when it collected no test: that is a failure here, said plainly
	$(BIN)/python -m pytest $(PYTEST_ARGS); code=$$?; \
	  if [ $$code -eq 5 ]; then echo "pytest collected no tests" >&2; fi; exit $$code

docs: $(STAMP)
	$(BIN)/python -m evalsvc.settings > docs/configuration.md
	$(BIN)/python -m scorers.catalog > docs/scorers.md
