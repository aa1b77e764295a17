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

# The main job: run the profile's grid (finished cells are skipped, so a second call only
# rebuilds), measure the engine's throughput once, then build the book strictly. --all: the
# chapters' sources may be unchanged while the results they read are new, so every page is reread.
# The default profile, paper, is shipped with the repository (results/paper, PROVENANCE.json):
# its cells are finished, so `make book` only builds; `make book PROFILE=quick` computes afresh.
PROFILE ?= paper
# grid cells run at once (CPU: each gets its share of the cores; GPUs: one each)
JOBS ?= 2
THROUGHPUT_ARGS_smoke := --steps 20 --members 4 --batch 64
THROUGHPUT_ARGS_quick := --steps 100 --members 32
THROUGHPUT_ARGS_paper := --steps 100 --members 32
THROUGHPUT_ARGS_full :=
RESULTS := $(CURDIR)/results/$(PROFILE)

book: install
	$(PY) -m fmstudy grid papermill_params/$(PROFILE).yaml --jobs $(JOBS)
	@# the measurement takes minutes and prints its table at the end: say so first, unbuffered (-u) so a log shows it as it comes
	@test -f $(RESULTS)/throughput.json || { echo "Measuring the engine's throughput once (benchmarks/throughput.py, several configurations x 3 interleaved rounds: a few minutes; kept in $(RESULTS)/throughput.json) ..."; \
		$(PY) -u benchmarks/throughput.py $(THROUGHPUT_ARGS_$(PROFILE)) --json $(RESULTS)/throughput.json; }
	@# the book shows this profile's run pages only: the others' folders are excluded in a copy of _config.yml
	$(PY) -c "import yaml; c = yaml.safe_load(open('_config.yml')); c['exclude_patterns'] += ['runs/' + p + '/*' for p in ('smoke', 'quick', 'full', 'paper') if p != '$(PROFILE)']; yaml.safe_dump(c, open('book/_config.$(PROFILE).yml', 'w'))"
	@# cells shipped without their pages (the paper profile's) get a table of their records, which the run links lead to
	$(PY) -m fmstudy.ship page $(RESULTS) book/runs/$(PROFILE)
	FMSTUDY_PROFILE=$(PROFILE) FMSTUDY_RESULTS=$(CURDIR)/results $(VENV)/bin/jupyter-book build book/ --config book/_config.$(PROFILE).yml --all -W --keep-going
	@echo "The book ($(PROFILE) profile): open $(CURDIR)/book/_build/html/index.html"

clean:
	rm -rf $(VENV) _build book/_build *.egg-info .pytest_cache
