# fmstudy: set-up and entry points. Everything installs into a local virtual environment.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel by default (CI and laptops). GPU users: see README ("GPU").
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# Everything the tests and the book need: the grid runner (papermill), Slurm (submitit), the book.
EXTRAS ?= test,book,slurm

.PHONY: install test book clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest

book:
	@echo "make book: the study pipeline and the book are not built yet (issues 5 and 6)." >&2
	@exit 1

clean:
	rm -rf $(VENV) _build *.egg-info .pytest_cache
