# jsae: every target builds what it needs from nothing; nothing depends on what is installed
# on the machine besides a Python >= 3.11 with venv.
#
#   make demo    offline end-to-end run on an embedded default
#   make test    the test suite, parity tests against the reference environment included
#   make lint    ruff
#   make bench   the benchmarks (slow; results go in benchmarks/README.md)

SHELL        := /bin/bash
.SHELLFLAGS  := -o pipefail -c

PYTHON   ?= python3
# pytest-xdist workers: two cut the suite's wall time by ~30% on a 2-core machine (compiles and
# subprocess waits overlap); TEST_WORKERS=0 runs it in one process
TEST_WORKERS ?= 2
VENV     ?= .venv
REF_VENV ?= .venv-ref
PIP       = -q --disable-pip-version-check --no-input
# Local wheel indexes on some machines print one harmless warning per package; keep logs readable.
QUIET_PIP = 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: all venv refenv test demo lint format bench clean

all: test

venv: $(VENV)/.installed
refenv: $(REF_VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/jax-constraints.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP) -c requirements/jax-constraints.txt -e ".[dev]" $(QUIET_PIP)
	$(VENV)/bin/python -c "import jsae, jsae.converters"
	touch $@

# PyTorch + SAELens/sparsify/dictionary_learning: the independent oracles of the parity tests.
# Separate because SAELens 6.x needs transformers 5 (no Flax) while jsae needs transformers 4.
# dictionary-learning drags in a CUDA torchvision that breaks transformers' imports: removed.
$(REF_VENV)/.installed: requirements/reference.txt requirements/reference-constraints.txt
	rm -rf $(REF_VENV)
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/pip install $(PIP) -c requirements/reference-constraints.txt -r requirements/reference.txt $(QUIET_PIP)
	$(REF_VENV)/bin/pip uninstall $(PIP) -y torchvision 2>/dev/null || true
	$(REF_VENV)/bin/python -c "import torch, sae_lens, sparsify, dictionary_learning; assert '+cpu' in torch.__version__, torch.__version__"
	touch $@

test: venv refenv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	JSAE_REFERENCE_PYTHON=$(abspath $(REF_VENV))/bin/python $(VENV)/bin/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/jsae demo

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

BENCH_ENV = JSAE_REFERENCE_PYTHON=$(abspath $(REF_VENV))/bin/python

bench: venv refenv
	$(BENCH_ENV) $(VENV)/bin/python benchmarks/bench_inference.py --rounds 3 --reps 3
	$(BENCH_ENV) $(VENV)/bin/python benchmarks/bench_train.py --steps 3 --rounds 3
	$(BENCH_ENV) $(VENV)/bin/python benchmarks/bench_train_run.py --steps 150 --l1-warm-up 7
	$(BENCH_ENV) $(VENV)/bin/python benchmarks/bench_load.py --ref-python $(abspath $(REF_VENV))/bin/python
	$(BENCH_ENV) $(VENV)/bin/python benchmarks/bench_activations.py --rounds 3
	$(BENCH_ENV) $(VENV)/bin/python benchmarks/bench_activation_store.py --rounds 3

clean:
	rm -rf $(VENV) $(REF_VENV) .pytest_cache build *.egg-info
