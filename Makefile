# `make repro` and `make test` are all a fresh machine needs: each creates the
# virtual environment if there is none, installs the project, then does its job.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# TensorFlow's build: gpu (tensorflow[and-cuda]) where nvidia-smi lists a GPU, else cpu;
# `make install TF=cpu` to choose.
TF     ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
# Quoted throughout: the checkout may live under a path with spaces; the shell makes BIN absolute.
RUN    := PATH="$$(cd "$(BIN)" && pwd):$$PATH"

.PHONY: lint repro test test-slow test-all test-team team-up team-down install-team demo ui exps bench bench-sweep install clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x "$(BIN)/python" || $(PYTHON) -m venv "$(VENV)"
	"$(BIN)/python" -m pip install --quiet --upgrade pip
	"$(BIN)/python" -m pip install --quiet -e '.[test,$(TF)]'
	touch "$@"

# Team mode's extras (docs/team.md): psycopg2, dvc-s3, SeaweedFS, mirakuru, port-for, then the
# boto3 that matches the botocore dvc-s3 brought.
TEAM_STAMP := $(VENV)/.installed-team
install-team: $(TEAM_STAMP)

$(TEAM_STAMP): $(STAMP)
	"$(BIN)/python" -m pip install --quiet -e '.[test,team,$(TF)]'
	"$(BIN)/python" -m pip install --quiet "boto3==$$("$(BIN)/python" -c 'import botocore; print(botocore.__version__)')"
	touch "$@"

repro: $(STAMP)
	$(RUN) dvc repro

test: $(STAMP)
	$(RUN) python -m pytest

# ruff, configured in pyproject.toml: pycodestyle, pyflakes and import order over src, tests, bench and scripts.
lint: $(STAMP)
	$(RUN) ruff check src tests bench scripts

# The longest end-to-end cases (marker slow), kept out of make test's 15 minutes; CI runs them.
test-slow: $(STAMP)
	$(RUN) python -m pytest -m slow

test-all: $(TEAM_STAMP)
	$(RUN) python -m pytest -m ""

# Team mode with its extras: the server-free units, then the end-to-end test, which starts
# PostgreSQL, S3 and mlflow server on loopback (a few minutes).
test-team: $(TEAM_STAMP)
	$(RUN) python -m pytest -m "" tests/test_team_units.py tests/test_team_stack.py tests/test_team_e2e.py

# A local team stack on loopback for trying team mode; its data under .team/ (removed by team-down).
team-up: $(TEAM_STAMP)
	$(RUN) l2lab team up

team-down: $(TEAM_STAMP)
	$(RUN) l2lab team down

# Side-by-side training benchmark against the seed article's loop (and PyTorch, where installed);
# writes reports/bench.json. BENCH_ARGS passes options, e.g. BENCH_ARGS="--max-isa avx2".
BENCH_ARGS ?=
bench: $(STAMP)
	$(RUN) python bench/train_speed.py $(BENCH_ARGS)

# The experiments table a lambda study reads: accuracies, gap, total norm, run id, then the
# params that differ between experiments (source hashes, data paths, per-layer columns dropped).
EXPS_DROP := ^(src|data|models|reports)/|^data\.(url|sha256)$$|^(weight_norm|sparsity)\.(conv|dense)|^test_loss$$|^train_accuracy$$|^Created$$
exps: $(STAMP)
	$(RUN) dvc exp show --no-pager --only-changed --drop '$(EXPS_DROP)'

# A small lambda grid as l2lab sweep --jobs 1, --jobs 2 and plain fit() processes, interleaved;
# writes reports/sweep_bench.json. BENCH_ARGS passes options, e.g. BENCH_ARGS="--archive PATH".
bench-sweep: $(STAMP)
	$(RUN) python bench/sweep_speed.py $(BENCH_ARGS)

demo: $(STAMP)
	$(RUN) python -m l2lab.demo

# The MLflow UI for this repo's runs, on loopback only (docs/sweeps.md says how to share it safely).
UI_PORT ?= 5000
ui: $(STAMP)
	$(RUN) l2lab ui --port $(UI_PORT)

clean-venv:
	rm -rf "$(VENV)"
