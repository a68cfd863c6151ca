# The two commands the README promises: `make demo` and `make test`.
# Both create the virtual environment in .venv and install procpool first.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# The Evennia integration tests run a real game in a Python 3.12 virtualenv
# holding Evennia and this checkout (tests/test_evennia.py).
PYTHON312 ?= $(shell for p in $(HOME)/.pyenv/versions/3.12*/bin/python3.12 $$(command -v python3.12); do "$$p" -c "" 2>/dev/null && { echo "$$p"; break; }; done)
EVENNIA_VENV  := .venv-evennia
EVENNIA_STAMP := $(EVENNIA_VENV)/.installed

.PHONY: demo test lint bench install clean evennia-venv

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench,metrics,ray,plot]' --config-settings editable_mode=compat
	@# Bytecode now: with PYTHONDONTWRITEBYTECODE set, every worker would compile its modules at start.
	$(PY) -m compileall -q procpool workers sandbox >/dev/null
	touch $(STAMP)

install: $(STAMP)

$(EVENNIA_STAMP): setup.cfg pyproject.toml
	@if [ -z "$(PYTHON312)" ]; then \
	    echo "make: no Python 3.12 found (set PYTHON312=...): the Evennia tests will skip"; \
	else \
	    $(PYTHON312) -m venv $(EVENNIA_VENV) && \
	    $(EVENNIA_VENV)/bin/python -m pip install --quiet --upgrade pip && \
	    $(EVENNIA_VENV)/bin/python -m pip install --quiet -e '.[evennia]' --config-settings editable_mode=compat && \
	    $(EVENNIA_VENV)/bin/python -m compileall -q procpool workers sandbox >/dev/null && \
	    touch $(EVENNIA_STAMP); \
	fi

evennia-venv: $(EVENNIA_STAMP)

demo: $(STAMP)
	$(VENV)/bin/procpool demo $(ARGS)

test: $(STAMP) $(EVENNIA_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check procpool workers sandbox tests bench

bench: $(STAMP)
	$(PY) bench/run.py $(ARGS)

clean:
	rm -rf $(VENV) $(EVENNIA_VENV) *.egg-info .pytest_cache procpool.sqlite3* procpool-demo.sqlite3*
