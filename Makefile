# `make demo`: install, train the chapter's model for EPOCHS passes, then infer (`DATASET=ml-100k DATA_DIR=...`: other data).
# `make test`: install, lint, run the tests.
# `make docs`: the documentation site from docs/ into site/ (offline, --strict).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu,dev
DATA_DIR ?=
DATASET ?= ml-1m
MODEL_DIR ?= recommender_system.inference.model
# the demo's passes: the chapter trains 20 (`make demo EPOCHS=20`)
EPOCHS ?= 2
# the demo trains a model to serve, on every rating (`SPLIT=random`: the chapter's split, with its test cost)
SPLIT ?= all
# more flags for the demo's `recsys.train`, e.g. the objective
TRAIN_FLAGS ?=
# where the demo writes its synthetic archive, and the real ml-1m movies.dat and users.dat it builds it around
DEMO_DATA ?= demo-data
DEMO_META ?= $(or $(RECSYS_SHARED_DATA),../shared/data)/ml-1m
DATA_FLAG := $(if $(DATA_DIR),--data-dir $(DATA_DIR))

.PHONY: install test demo docs bench lint clean

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

demo: install  # where ml-1m is neither here nor downloadable: a synthetic archive in its layout, and it says so
	@data="$(DATA_FLAG)"; \
	if [ -z "$(DATA_DIR)" ] && [ "$(DATASET)" = ml-1m ] && \
	   ! $(PY) -c "from recsys.data import fetch; fetch.locate('ml-1m')" > /dev/null 2>&1; then \
	  meta=; test -f "$(DEMO_META)/movies.dat" && meta="--meta-dir $(DEMO_META)"; \
	  echo "ml-1m could not be downloaded: the demo runs on a synthetic archive in ml-1m's layout in $(DEMO_DATA)/" \
	    "($${meta:+the real movies and users of $(DEMO_META), }invented ratings): every number below is synthetic"; \
	  test -f $(DEMO_DATA)/ml-1m.zip || $(PY) -m recsys.synthetic $(DEMO_DATA) $$meta > /dev/null || exit 2; \
	  data="--data-dir $(DEMO_DATA)"; \
	fi; \
	$(PY) -m recsys.train --dataset $(DATASET) $$data --split $(SPLIT) --model-dir $(MODEL_DIR) --epochs $(EPOCHS) $(TRAIN_FLAGS) && \
	$(PY) -m recsys.infer --model-dir $(MODEL_DIR) --user 1 --top-k 10 && \
	$(PY) -m recsys.infer --model-dir $(MODEL_DIR) --user 1 --movie 783

docs: install  # the reference pages are generated from the code, the benchmark pages from benchmarks/results
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d site

bench: install
	$(PY) -m pytest -q -m slow
	$(PY) benchmarks/run.py
	$(PY) benchmarks/step_parts.py
	$(PY) benchmarks/topn_serve.py
	$(PY) benchmarks/peers.py --latest-small --split temporal
	$(PY) benchmarks/ratings_in.py
	$(PY) benchmarks/scale.py --max-batches 20000
	$(PY) benchmarks/busy.py

clean:
	rm -rf $(VENV) $(MODEL_DIR) site demo-data *.model .*.lock .*.previous .*.tmp test-artifacts .pytest_cache .ruff_cache \
		*.egg-info build
	rm -rf recsys/__pycache__ recsys/*/__pycache__ tests/__pycache__ benchmarks/__pycache__
