# `make repro` and `make test` are all a fresh machine needs: each creates the
# virtual environment if there is none, installs the project, then does its job.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed
RUN    := PATH="$(BIN):$$PATH"

.PHONY: repro test test-all demo ui exps bench install clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

repro: $(STAMP)
	$(RUN) dvc repro

test: $(STAMP)
	$(RUN) python -m pytest

test-all: $(STAMP)
	$(RUN) python -m pytest -m ""

# Side-by-side training benchmark against the seed article's loop; writes reports/bench.json.
bench: $(STAMP)
	$(RUN) python bench/train_speed.py

# The experiments table a lambda study reads: accuracies, gap, total norm, run id, then the
# params that differ between experiments (source hashes, data paths, per-layer columns dropped).
EXPS_DROP := ^(src|data|models|reports)/|^data\.(url|sha256)$$|^(weight_norm|sparsity)\.(conv|dense)|^test_loss$$|^train_accuracy$$|^Created$$
exps: $(STAMP)
	$(RUN) dvc exp show --no-pager --only-changed --drop '$(EXPS_DROP)'

demo: $(STAMP)
	$(RUN) python -m l2lab.demo

# The MLflow UI for this repo's runs, on loopback only (see README to expose it safely).
UI_PORT ?= 5000
ui: $(STAMP)
	$(RUN) l2lab ui --port $(UI_PORT)

clean-venv:
	rm -rf $(VENV)
