# `make demo`: install, train the chapter's model, then infer (`DATASET=ml-100k DATA_DIR=...`: other data).
# `make test`: install, lint, run the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu,dev
DATA_DIR ?=
DATASET ?= ml-1m
MODEL_DIR ?= recommender_system.inference.model
EPOCHS ?= 20
DATA_FLAG := $(if $(DATA_DIR),--data-dir $(DATA_DIR))

.PHONY: install test demo bench lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

lint: install
	$(PY) -m ruff check recsys tests benchmarks
	$(PY) -m ruff format --check recsys tests benchmarks

test: lint  # one worker per core (at most 4), each on one thread, unpinned (the scheduler balances them beside
# other processes); an idle one takes tests from a busy one
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist worksteal

demo: install
	$(PY) -m recsys.train --dataset $(DATASET) $(DATA_FLAG) --model-dir $(MODEL_DIR) --epochs $(EPOCHS)
	$(PY) -m recsys.infer --model-dir $(MODEL_DIR) --user 1 --movie 783
	$(PY) -m recsys.infer --model-dir $(MODEL_DIR) --user 1 --top-k 10

bench: install
	$(PY) -m pytest -q -m slow
	$(PY) benchmarks/run.py
	$(PY) benchmarks/step_parts.py
	$(PY) benchmarks/topn_serve.py
	$(PY) benchmarks/peers.py --latest-small
	$(PY) benchmarks/ratings_in.py
	$(PY) benchmarks/scale.py --max-batches 20000
	$(PY) benchmarks/busy.py

clean:
	rm -rf $(VENV) $(MODEL_DIR) *.model .*.lock .*.previous .*.tmp test-artifacts .pytest_cache .ruff_cache \
		*.egg-info build
	rm -rf recsys/__pycache__ recsys/*/__pycache__ tests/__pycache__ benchmarks/__pycache__
